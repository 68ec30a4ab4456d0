from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from click.testing import CliRunner

import batchnlp.execution.runner
from batchnlp.cli import main
from batchnlp.errors import ModelError
from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.inference.models.refs import parse_ref
from batchnlp.inference.models.stage import check_ref, content_checksums, content_digest, stage, weight_checksums
from tests.support.helpers import cli_job, upload_dir, write_jsonl

DIGEST = "a" * 64


def test_refs_are_parsed_by_shape(tmp_path):
    assert parse_ref(str(tmp_path)).kind == "local"
    assert parse_ref("s3://b/models/x/").kind == "remote"
    hub = parse_ref("distilbert/distilbert-base-uncased-finetuned-sst-2-english@714eb0f")
    assert (hub.kind, hub.location, hub.revision) == (
        "hub",
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        "714eb0f",
    )


def test_pickle_only_checkpoints_are_refused(tiny_model, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model / "config.json", pickled)
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickle weights \(pytorch_model.bin\).*only \*\.safetensors"):
        check_ref(str(pickled), {})


def test_a_model_s_version_follows_its_content_not_its_location(tiny_model, tmp_path, s3, bucket):
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    version = check_ref(str(tiny_model), {})
    assert version.startswith("sha256:") and check_ref(str(copy), {}) == version, "a copied checkpoint is the same"
    url = upload_dir(s3, copy, bucket, "models/versioned")
    remote = check_ref(url, {})
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-4] + b"    ")
    assert check_ref(str(copy), {}) != version, "retrained weights under the same path"
    upload_dir(s3, copy, bucket, "models/versioned")
    assert check_ref(url, {}) != remote, "re-uploaded weights under the same prefix"


def test_missing_local_model_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"model directory .*nope.* not found"):
        check_ref(str(tmp_path / "nope"), {})


def test_unreachable_hub_suggests_a_local_or_s3_model():
    with pytest.raises(ModelError, match=r"Hugging Face Hub.*--model TASK=PATH_OR_S3"):
        check_ref("distilbert/no-such-model-for-batchnlp-tests", {})


def test_s3_models_are_staged_once_per_machine(tiny_model, s3, bucket, s3_proxy):
    url = upload_dir(s3, tiny_model, bucket, "models/sst2")
    check_ref(url, {})
    s3_proxy.clear()
    first = stage(url, {})
    weight_gets = s3_proxy.count("GET", "model.safetensors")
    assert weight_gets >= 1
    assert stage(url, {}) == first
    assert s3_proxy.count("GET", "model.safetensors") == weight_gets, "second stage reuses the cache"
    assert weight_checksums(first) == weight_checksums(tiny_model)


def test_missing_s3_model_is_named(s3, bucket):
    with pytest.raises(ModelError, match=f"model 's3://{bucket}/models/none/' not found"):
        check_ref(f"s3://{bucket}/models/none/", {})


# --- pinned by digest ----------------------------------------------------------------------------


def replaced_weights(model, dest):
    """A copy of ``model`` whose weights differ in their last bytes: a model retrained under the same name."""
    copy = shutil.copytree(model, dest)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"    ")
    return copy


def test_a_digest_is_the_same_for_a_directory_and_its_s3_copy(tiny_model, tmp_path, s3, bucket):
    digest = content_digest(content_checksums(tiny_model))
    assert check_ref(str(tiny_model), {}) == digest, "a directory's version is the digest to pin"
    reproduced = subprocess.run(
        "{ ls -A | grep -E '[.](json|txt|model|safetensors)$' | grep -vx batchnlp-model.json; "
        "ls -d [0-9]*_*/*.json 2>/dev/null; } | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
        shell=True, cwd=tiny_model, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert reproduced.stdout.split()[0] == digest.removeprefix("sha256:"), "the documented recipe gives the digest"

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    (copy / "batchnlp-model.json").write_text('{"pulled_at": "now"}')  # provenance: outside the digest
    (copy / "pytorch_model.bin").write_bytes(b"pickle: never loaded, never hashed")
    url = upload_dir(s3, copy, bucket, "models/sst2")
    result = CliRunner().invoke(main, ["models", "digest", url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{url}@{digest}"
    assert check_ref(f"{url}@{digest}", {}) == digest, "a pinned ref's version is its pin"
    assert CliRunner().invoke(main, ["models", "digest", str(copy)]).stdout.strip() == f"{copy}@{digest}"


def test_a_model_replaced_while_it_is_downloaded_is_fetched_again(tiny_model, tmp_path, s3, bucket, s3_proxy):
    """The weights' GET is answered late; meanwhile other weights are uploaded. The copy is not
    cached under the first listing (where restoring the old files would find it again)."""
    url = upload_dir(s3, tiny_model, bucket, "models/racing")
    replaced = replaced_weights(tiny_model, tmp_path / "new")
    s3_proxy.clear()
    s3_proxy.inject("delay", "GET", r"/models/racing/model[.]safetensors", seconds=2.0)
    with ThreadPoolExecutor(1) as pool:
        staging = pool.submit(stage, url, {}, str(tmp_path / "cache"))
        while not s3_proxy.faults("delay") and not staging.done():
            threading.Event().wait(0.02)
        upload_dir(s3, replaced, bucket, "models/racing")
        staged = staging.result(timeout=60)
    assert weight_checksums(staged) == weight_checksums(replaced)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [staged.name], "only the consistent copy is kept"
    assert s3_proxy.count("GET", "model.safetensors") == 2


@pytest.mark.parametrize(
    "ref, fragment",
    [
        (f"s3://b/m/@sha256:{DIGEST[:63]}", "malformed digest pin 'sha256:a{63}'"),
        (f"s3://b/m/@sha256:{DIGEST[:63]}g", "malformed digest pin"),
        (f"s3://b/m/@sha256:{DIGEST}/", "malformed digest pin"),
        (f"@sha256:{DIGEST}", "malformed digest pin"),
        (f"acme/sst2@sha256:{DIGEST}", "Hugging Face Hub id, and Hub refs pin by commit: write ID@COMMIT"),
        (f"acme/sst2@main@sha256:{DIGEST}", "Hub refs pin by commit"),
    ],
    ids=["short", "not-hex", "trailing-slash", "no-ref", "hub", "hub-revision"],
)
def test_malformed_pins_and_hub_pins_are_refused_naming_the_ref(ref, fragment):
    with pytest.raises(ModelError, match=fragment) as refused:
        check_ref(ref, {})
    assert str(refused.value).startswith(f"model {ref!r} ")


def test_pins_leave_hub_revisions_and_at_signs_in_urls_alone():
    assert parse_ref("acme/sst2@v1.2").revision == "v1.2"
    assert parse_ref("s3://b/models/team@2025/").location == "s3://b/models/team@2025/"
    pinned = parse_ref(f"s3://b/m/@SHA256:{DIGEST.upper()}")
    assert (pinned.kind, pinned.location, pinned.digest, pinned.name) == (
        "remote", "s3://b/m/", f"sha256:{DIGEST}", "s3://b/m/",
    )  # fmt: skip


def test_a_pinned_model_runs_and_a_replaced_one_stops_the_run(tiny_model, tmp_path, s3, bucket, scheduler, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ("great", "awful", "fine")])
    url = upload_dir(s3, tiny_model, bucket, "models/sst2")
    pinned, replaced = content_digest(content_checksums(tiny_model)), replaced_weights(tiny_model, tmp_path / "new")
    new = content_digest(content_checksums(replaced))

    ran = cli_job(f"{url}@{pinned}", scheduler)(source, tmp_path / "night1")
    assert ran.exit_code == 0, ran.output
    manifest = json.loads((tmp_path / "night1" / "_manifest.json").read_text())
    assert manifest["models"]["sentiment"]["version"] == pinned
    assert manifest["models"]["sentiment"]["ref"] == f"{url}@{pinned}"

    # Between two nights, other weights are uploaded under the same prefix: the driver refuses.
    upload_dir(s3, replaced, bucket, "models/sst2")
    refused = cli_job(f"{url}@{pinned}", scheduler)(source, tmp_path / "night2")
    assert refused.exit_code == 2, refused.output
    assert f"model {url} has digest {new}, but the spec pins {pinned}" in refused.output
    assert f"batchnlp models digest {url}" in refused.output
    assert not (tmp_path / "night2" / "_SUCCESS").exists()

    # Pinned to the new weights, but the old ones come back after the driver's check and before any
    # worker stages the model: the worker's own check stops the run, with the same exit code.
    swaps = []

    def check_then_swap(ref, storage_options):
        version = check_ref(ref, storage_options)
        upload_dir(s3, tiny_model, bucket, "models/sst2")
        swaps.append(ref)
        return version

    monkeypatch.setattr(batchnlp.execution.runner, "check_ref", check_then_swap)
    swapped = cli_job(f"{url}@{new}", scheduler)(source, tmp_path / "night3")
    assert swaps == [f"{url}@{new}"], "the driver's check passed, then the model was swapped"
    assert swapped.exit_code == 2, swapped.output
    assert f"model {url} has digest {pinned}, but the spec pins {new}" in swapped.output
    assert not (tmp_path / "night3" / "_SUCCESS").exists()


@pytest.mark.cluster
def test_a_checkpoint_whose_head_does_not_match_its_config_is_a_model_error(qa_model, tmp_path):
    """Was "unexpected RuntimeError … this is a bug in batchnlp" (exit 1), with two worker tracebacks under -q."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-qa"
    shutil.copytree(qa_model, broken)
    weights = load_file(broken / "model.safetensors")
    weights["qa_outputs.weight"] = torch.zeros(3, weights["qa_outputs.weight"].shape[1])
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a contract", "question": "who?"}])
    run = subprocess.run(
        ["batchnlp", "run", str(source), str(tmp_path / "out"), "--task", "qa", "--model", f"qa={broken}",
         "--question-column", "question", "--workers", "1", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "qa_outputs.weight is [3, 32] in model.safetensors, but [2, 32] for the config" in run.stderr
    assert "Traceback" not in run.stderr and "bug in batchnlp" not in run.stderr
    assert run.stderr.count("\n") <= 2, run.stderr  # -q: the error alone


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"<Error><Code>AccessDenied</Code></Error>"],
    ids=["truncated", "not-safetensors"],
)
def test_an_unreadable_weights_file_is_a_model_error_naming_it(tiny_model, tmp_path, damage):
    """Was "unexpected SafetensorError … this is a bug in batchnlp" (exit 1), with a worker traceback under -q."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelError, match=r"cannot read model\.safetensors \(.*\), so the file is truncated"):
        load_sequence_classifier(broken, str(broken))
