"""Guarantee 7, safety: only safetensors load, remote code never runs, nothing is written outside
OUTPUT, and credentials never reach what the job prints or writes.

Each check is built so that it fails when its protection goes: the pickle is booby-trapped (its
unpickling writes a marker file, and the test first proves the trap fires), the remote code
writes a marker on import, the hostile job runs with HOME, TMPDIR, the working directory and the
model cache inside one snapshotted directory, and the secrets are recognisable strings searched
for, whole and in pieces, in every byte the job printed or wrote.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchnlp.errors import ModelError
from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.inference.models.stage import check_ref, stage, weight_checksums
from batchnlp.observe.logs import configure_logging
from batchnlp.util.redaction import PRELOAD, redact_text
from tests.support import REPO
from tests.support.helpers import upload_dir, write_jsonl

# --- booby-trapped checkpoints -------------------------------------------------------------------


class _Trap:
    """Unpickling this runs ``exec``: a pickle file is a program, whatever its name says."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def trapped_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Trap(marker), protocol=2)


def evil_code(marker: Path, module: str) -> str:
    """A module that records its import, then defines working classes (as real remote code would)."""
    return (
        f"open({str(marker)!r} + '-{module}', 'w').write('imported')\n"
        "from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast\n"
        "class EvilConfig(DistilBertConfig):\n    model_type = 'evil'\n"
        "class EvilModel(DistilBertForSequenceClassification):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )


def trapped_checkpoint(
    source: Path,
    dest: Path,
    marker: Path,
    *,
    safetensors: bool = True,
    remote_code: str | None = None,
) -> Path:
    """A copy of ``source`` plus a booby-trapped ``pytorch_model.bin``; without ``safetensors``
    the safe weights are gone. ``remote_code`` (a config ``model_type``) adds an ``auto_map`` that
    points every Auto class at modules in the directory that write ``marker-<module>`` on import."""
    shutil.copytree(source, dest)
    (dest / "pytorch_model.bin").write_bytes(trapped_pickle(marker))
    if not safetensors:
        (dest / "model.safetensors").unlink()
    if remote_code:
        for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
            (dest / f"{module}.py").write_text(evil_code(marker, module))
        config = json.loads((dest / "config.json").read_text())
        config["model_type"] = remote_code
        config["auto_map"] = {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
            "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
            "AutoModelForQuestionAnswering": "modeling_evil.EvilModel",
        }
        (dest / "config.json").write_text(json.dumps(config))
        tokenizer = json.loads((dest / "tokenizer_config.json").read_text())
        tokenizer["auto_map"] = {
            "AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]
        }
        (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return dest


def markers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("MARKER*"))


@pytest.fixture
def torch_load_calls(monkeypatch) -> list:
    """Every ``torch.load`` call in this process (transformers' only way into a pickle)."""
    import torch

    calls: list = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_the_trap_fires_when_unpickled(tmp_path):
    """Without this, a marker that never appears would prove nothing."""
    pickle.loads(trapped_pickle(tmp_path / "MARKER"))
    assert markers(tmp_path) == ["MARKER"]


# --- 1. safetensors only -------------------------------------------------------------------------


def test_safetensors_load_and_the_trapped_pickle_beside_them_is_never_opened(tiny_model, tmp_path, torch_load_calls):
    from safetensors.torch import load_file

    checkpoint = trapped_checkpoint(tiny_model, tmp_path / "both", tmp_path / "MARKER")
    check_ref(str(checkpoint), {})
    directory = stage(str(checkpoint), {})
    _, model = load_sequence_classifier(directory, str(checkpoint))

    assert markers(tmp_path) == [] and torch_load_calls == []
    expected = load_file(tiny_model / "model.safetensors")
    state = model.state_dict()
    assert all(state[name].equal(tensor) for name, tensor in expected.items()), "weights are the safetensors'"
    assert list(weight_checksums(directory)) == ["model.safetensors"], "the manifest names only safe weights"


def test_a_pickle_only_checkpoint_is_refused_without_unpickling(tiny_model, tmp_path, torch_load_calls):
    checkpoint = trapped_checkpoint(tiny_model, tmp_path / "pickled", tmp_path / "MARKER", safetensors=False)
    refusal = r"has only pickle weights \(pytorch_model\.bin\); batchnlp loads only \*\.safetensors, since pickle"
    with pytest.raises(ModelError, match=refusal):
        check_ref(str(checkpoint), {})
    with pytest.raises(ModelError, match=refusal):
        stage(str(checkpoint), {})
    # The loader itself, reached without the pre-flight: transformers is told safetensors only.
    with pytest.raises(ModelError, match=r"cannot load model .* no file named model\.safetensors"):
        load_sequence_classifier(checkpoint, str(checkpoint))
    assert markers(tmp_path) == [] and torch_load_calls == []


def test_the_cli_refuses_a_pickle_only_model_before_any_work(tiny_model, tmp_path):
    from click.testing import CliRunner

    from batchnlp.cli import main

    checkpoint = trapped_checkpoint(tiny_model, tmp_path / "pickled", tmp_path / "MARKER", safetensors=False)
    write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}])
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", f"sentiment={checkpoint}"]
    )
    assert result.exit_code == 2, result.output
    assert "only pickle weights (pytorch_model.bin)" in result.output and "Traceback" not in result.output
    assert markers(tmp_path) == [] and not (tmp_path / "out").exists()


# --- 2. no remote code ---------------------------------------------------------------------------


def test_auto_map_to_code_in_a_distilbert_checkpoint_is_ignored(tiny_model, tmp_path):
    """A config that names a model type transformers knows loads that type's own class."""
    checkpoint = trapped_checkpoint(tiny_model, tmp_path / "evil", tmp_path / "MARKER", remote_code="distilbert")
    tokenizer, model = load_sequence_classifier(stage(str(checkpoint), {}), str(checkpoint))
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert type(model).__module__.startswith("transformers.models.distilbert")
    assert type(tokenizer).__module__.startswith("transformers.") and "Evil" not in type(tokenizer).__name__
    assert markers(tmp_path) == [] and not [m for m in sys.modules if "evil" in m]


def test_a_checkpoint_that_needs_its_own_code_is_refused(tiny_model, tmp_path):
    """An unknown model type could only load by running the directory's code: it is refused."""
    checkpoint = trapped_checkpoint(tiny_model, tmp_path / "evil", tmp_path / "MARKER", remote_code="evil")
    with pytest.raises(ModelError, match=r"cannot load model .*(contains custom code|never runs a checkpoint's code)"):
        load_sequence_classifier(stage(str(checkpoint), {}), str(checkpoint))
    assert markers(tmp_path) == [] and not [m for m in sys.modules if "evil" in m]


# --- 3. no writes outside OUTPUT -----------------------------------------------------------------

ESCAPE = "../../escape"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (links not followed) with its size and modification time."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def sandbox(root: Path) -> dict[str, str]:
    """An environment whose HOME, TMPDIR (Dask's scratch space), model cache and working directory
    (``root/cwd``) lie under ``root``, so whatever a job leaves on local disk is found there."""
    for name in ("home", "tmp", "cache", "cwd"):
        (root / name).mkdir(parents=True, exist_ok=True)
    places = {"HOME": "home", "TMPDIR": "tmp", "BATCHNLP_CACHE": "cache"}
    return {**os.environ, **{variable: str(root / name) for variable, name in places.items()}}


def run_batchnlp(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "batchnlp", "run", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.mark.cluster
def test_hostile_names_write_nothing_outside_output(tiny_model, tmp_path):
    """A real job whose paths, file names, columns and task name try to climb out of OUTPUT."""
    root = tmp_path / "root"
    env = sandbox(root)
    # The model: safetensors plus a trapped pickle and remote code, named through '..' segments.
    models = root / "models"
    trapped_checkpoint(tiny_model, models / "sst2 ü", root / "MARKER", remote_code="distilbert")
    model_ref = str(models / "sst2 ü" / ".." / ".." / "models" / "sst2 ü")
    # The input: a directory and files with spaces, unicode and '..' in their names.
    inputs = root / "in .. ü 日本"
    text, ids = f"{ESCAPE}-text", f"{ESCAPE}-id"
    rows = [{ids: f"r{i}", text: ESCAPE if i % 3 == 0 else f"a fine day {i}", "n": i} for i in range(24)]
    write_jsonl(inputs / "a..b ü.jsonl", rows[:12])
    write_jsonl(inputs / "sub dir" / "b ..escape.. ü.jsonl", rows[12:])
    input_ref = str(inputs / "sub dir" / ".." / ".." / inputs.name)
    output = root / "a" / "b" / "out"
    spec = root / "cwd" / "job.yaml"
    spec.write_text(
        json.dumps(
            {
                "input": input_ref,
                "output": str(output),
                "tasks": [{"name": ESCAPE, "task": "sentiment", "model": model_ref}],
                "text_column": text,
                "id_column": ids,
                "workers": 1,
                "rows_per_partition": 8,
            }
        )
    )
    before = snapshot(tmp_path)

    done = run_batchnlp(["--spec", str(spec), "-v"], env, cwd=root / "cwd")

    assert done.returncode == 0, done.stderr[-3000:]
    after = snapshot(tmp_path)
    changed = sorted(path for path, stat in after.items() if before.get(path) != stat)
    out = str(output.relative_to(tmp_path)) + "/"
    # Dask keeps its scratch space under tempfile.gettempdir() (TMPDIR here); each worker's
    # directory in it is removed when the worker closes, and two lock files stay behind.
    dask = str((root / "tmp" / "dask-scratch-space").relative_to(tmp_path)) + "/"
    assert [p for p in changed if not p.startswith((out, dask))] == []
    assert {p for p in changed if p.startswith(dask)} <= {dask + "global.lock", dask + "purge.lock"}
    assert not [p for p in after if "escape" in Path(p).name and "..escape.." not in p]
    assert markers(root) == [], "neither the pickle nor the remote code ran in a worker"

    import pyarrow.dataset as ds

    table = ds.dataset(output, format="parquet").to_table()
    assert table.column_names == [ids, text, "n", ESCAPE, "_error"], "hostile names are column names, nothing more"
    assert table.column(ids).to_pylist() == [r[ids] for r in rows]
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["models"][ESCAPE]["weights"] == weight_checksums(tiny_model)
    assert list(manifest["models"][ESCAPE]["weights"]) == ["model.safetensors"]
    assert manifest["totals"]["rows_out"] == len(rows)


def test_a_remote_model_with_hostile_key_names_stages_inside_its_cache_only(s3, bucket, tiny_model, tmp_path):
    """Keys with '..' segments, backslashes or encoded slashes under a model prefix: staging writes
    plain files into one directory of the cache, or skips the key, and nothing anywhere else."""
    url = upload_dir(s3, tiny_model, bucket, "models/sst2")
    hostile = ["../../escape.json", "sub/../../../escape.json", "..\\..\\escape.json", "%2E%2E%2Fescape.json", "..json"]
    for name in hostile:
        s3.put_object(Bucket=bucket, Key=f"models/sst2/{name}", Body=b"{}")
    before = snapshot(tmp_path)
    staged = stage(url, {}, cache_dir=str(tmp_path / "a" / "b" / "cache"))
    changed = sorted(path for path, stat in snapshot(tmp_path).items() if before.get(path) != stat)
    assert staged.parent == tmp_path / "a" / "b" / "cache"
    assert [p for p in changed if Path(p).parent != staged.relative_to(tmp_path)] == []
    assert {Path(p).name for p in changed} >= {"config.json", "model.safetensors"}


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--task", ESCAPE], f"unknown task {ESCAPE!r}; available tasks:"),
        (["--model", f"{ESCAPE}=/nowhere"], f"--model {ESCAPE}=... names no task of this job"),
    ],
)
def test_a_hostile_task_name_on_the_command_line_is_refused_before_any_work(tmp_path, flags, refusal):
    """--task takes a task kind, so '../../escape' is unknown; a job spec may name a task so, and then
    it is only a column name (above)."""
    from click.testing import CliRunner

    from batchnlp.cli import main

    write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}])
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), str(tmp_path / "a" / "out"), *flags])
    assert result.exit_code == 2 and refusal in result.output, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in.jsonl"]


# --- 4. secrets never leak -----------------------------------------------------------------------
# moto accepts any credentials by default, so every job below authenticates with fake ones.


def fake(label: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """A recognisable fake credential: ``label`` then random characters, distinct per label."""
    rng = random.Random(label)
    return (label + "".join(rng.choice(alphabet) for _ in range(length)))[:length]


def secret_sandbox(root: Path) -> dict[str, str]:
    """:func:`sandbox` with fake AWS credentials in the environment."""
    return {
        **sandbox(root),
        "AWS_ACCESS_KEY_ID": SECRETS["env key"],
        "AWS_SECRET_ACCESS_KEY": SECRETS["env secret"],
        "AWS_SESSION_TOKEN": SECRETS["env token"],
    }


def presigner() -> Any:
    """A client of moto's S3 that presigns URLs (SigV4, with a session token) with :func:`secret_sandbox`'s keys."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=SECRETS["env key"],
        aws_secret_access_key=SECRETS["env secret"],
        aws_session_token=SECRETS["env token"],
        config=Config(signature_version="s3v4"),
    )


def fake_key_id(label: str) -> str:
    return "AKIA" + fake(label, 16, string.ascii_uppercase + string.digits)


SECRETS = {
    "env key": fake_key_id("ENVKEY"),
    "env secret": fake("EnvSecret", 40),
    "env token": fake("FwoGZXIvYXdzEnvToken", 356),
    "spec key": fake_key_id("SPECKEY"),
    "spec secret": fake("SpecSecret", 40),
    "option key": fake_key_id("OPTKEY"),
    "option secret": fake("OptSecret", 40),
    "option token": fake("FwoGZXIvYXdzOptToken", 356),
    "url password": fake("UrlPassword", 24),
}


def pieces(secret: str) -> set[str]:
    """The secret and its 12-character windows (every 4th): any 15 characters of it that a partial
    mask or a truncation left contain one."""
    return {secret} | {secret[i : i + 12] for i in range(0, len(secret) - 11, 4)} | {secret[-12:]}


def leaks(written: dict[str, bytes], secrets: dict[str, str]) -> list[tuple[str, str, str]]:
    """(secret, piece, where) for every piece of every secret found in anything written."""
    return [
        (label, piece, where)
        for label, secret in secrets.items()
        for piece in sorted(pieces(secret))
        for where, data in written.items()
        if piece.encode() in data
    ]


def everything_written(
    s3, bucket: str, root: Path, runs: dict[str, subprocess.CompletedProcess], inputs: tuple[str, ...]
) -> dict[str, bytes]:
    """Every byte the runs printed, every object in the bucket but the inputs, every file under ``root``."""
    written = {}
    for name, done in runs.items():
        written[f"{name}: stdout"] = done.stdout.encode()
        written[f"{name}: stderr"] = done.stderr.encode()
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if not item["Key"].startswith(inputs):
            data = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            written[f"s3://{bucket}/{item['Key']}"] = data
            if item["Key"].endswith(".parquet"):  # compressed pages and key-value metadata, decoded
                written[f"s3://{bucket}/{item['Key']} (decoded)"] = decoded_parquet(data)
    for path in root.rglob("*"):
        if path.is_file() and path.name != "job.yaml":  # the spec file is the user's, not the job's
            written[str(path)] = path.read_bytes()
    return written


def decoded_parquet(data: bytes) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    return repr((table.schema.metadata, table.to_pylist())).encode()


def put_jsonl(s3, bucket: str, key: str, rows: int, broken_line: bool = False) -> None:
    lines = [json.dumps({"id": i, "text": f"a fine day number {i}"}) for i in range(rows)]
    if broken_line:  # past the plan-time sample (200 lines): a worker finds it
        lines.append('{"id": "broken", "text": ')
    s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


@pytest.mark.cluster
def test_credentials_never_reach_output_logs_errors_or_manifest(s3, bucket, s3_proxy, tiny_model, tmp_path):
    """Credentials from the environment, a job spec's storage_options and --storage-option, in a
    verbose successful run, a run that fails in a worker, and runs that fail before any work."""
    root = tmp_path / "root"
    env = secret_sandbox(root)
    trapped = trapped_checkpoint(tiny_model, tmp_path / "model", root / "MARKER", remote_code="distilbert")
    model = upload_dir(s3, trapped, bucket, "models/sst2")
    put_jsonl(s3, bucket, "in/good.jsonl", 40)
    put_jsonl(s3, bucket, "bad/bad.jsonl", 300, broken_line=True)
    spec = root / "cwd" / "job.yaml"
    spec.write_text(
        json.dumps(
            {
                "input": f"s3://{bucket}/in/",
                "output": f"s3://{bucket}/out/",
                "models": {"sentiment": model},
                "workers": 1,
                "storage_options": {"key": SECRETS["spec key"], "secret": SECRETS["spec secret"]},
            }
        )
    )
    options = [f"--storage-option={name}={SECRETS['option ' + name]}" for name in ("key", "secret", "token")]
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    userinfo = f"http://user:{SECRETS['url password']}@{endpoint}/{bucket}/models/sst2/"
    model_flag = ["--model", f"sentiment={model}"]
    small = ["--workers", "1", "--rows-per-partition", "100"]
    jobs = {
        # the spec's options merged with one from the command line; verbose; commits
        "spec": ["--spec", str(spec), "-v", options[2]],
        # options on the command line; not verbose; a worker meets a malformed line
        "worker failure": [f"s3://{bucket}/bad/", f"s3://{bucket}/out-bad/", *model_flag, *options, *small],
        # failures before any work: a missing output bucket, a model URL with a password
        "missing bucket": [f"s3://{bucket}/in/", "s3://no-such-output-bucket/out/", *model_flag, *options, "-v"],
        "userinfo model": [f"s3://{bucket}/in/", f"s3://{bucket}/o/", "--model", f"sentiment={userinfo}", "-v"],
    }
    runs = {name: run_batchnlp(args, env, cwd=root / "cwd") for name, args in jobs.items()}

    assert runs["spec"].returncode == 0, runs["spec"].stderr[-3000:]
    assert "wrote 40 rows" in runs["spec"].stdout
    failure = runs["worker failure"]
    assert failure.returncode == 2 and "bad.jsonl:301" in failure.stderr and "malformed JSON" in failure.stderr
    assert "Compute Failed" not in failure.stderr, "a user error comes back as one line, not a worker traceback"
    missing = runs["missing bucket"]
    assert missing.returncode == 2 and "'no-such-output-bucket' does not exist" in missing.stderr
    unreachable = runs["userinfo model"]
    assert unreachable.returncode == 2 and "error: model 'http://***@127.0.0.1:" in unreachable.stderr
    written = everything_written(s3, bucket, root, runs, inputs=("in/", "bad/", "models/"))
    assert f"s3://{bucket}/out/_manifest.json" in written and f"s3://{bucket}/out-bad/_progress/_job.json" in written
    assert leaks(written, SECRETS) == []
    manifest = json.loads(written[f"s3://{bucket}/out/_manifest.json"])
    assert manifest["spec"]["storage_options"] == {"key": "***", "secret": "***", "token": "***"}
    # The staged model holds only safe files: the trapped pickle and the remote code stay in S3.
    staged = sorted(p.name for p in (root / "cache").rglob("*") if p.is_file())
    assert staged == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert markers(root) == []


@pytest.fixture(scope="module")
def presigned(s3_proxy, tiny_model, tmp_path_factory):
    """Two jobs whose input is a presigned URL (SigV4, with a session token): one commits (verbose),
    one fails in a worker on a malformed line (not verbose). Returns what they printed and wrote."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = "t-safety-presigned"
    s3.create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("presigned") / "root"
    env = secret_sandbox(root)
    model = upload_dir(s3, tiny_model, bucket, "models/sst2")
    put_jsonl(s3, bucket, "in/good.jsonl", 40)
    put_jsonl(s3, bucket, "in/bad.jsonl", 300, broken_line=True)
    signer = presigner()
    urls = {
        name: signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": f"in/{name}.jsonl"})
        for name in ("good", "bad")
    }
    assert "X-Amz-Credential=" in urls["good"] and "X-Amz-Security-Token=" in urls["good"]
    common = ["--input-format", "jsonl", "--model", f"sentiment={model}", "--workers", "1"]
    cwd = root / "cwd"
    runs = {
        "presigned": run_batchnlp([urls["good"], f"s3://{bucket}/out/", *common, "-v"], env, cwd),
        "presigned failure": run_batchnlp(
            [urls["bad"], f"s3://{bucket}/out-bad/", *common, "--rows-per-partition", "100"], env, cwd
        ),
    }
    secrets = {label: SECRETS[label] for label in ("env key", "env secret", "env token")}
    for name, url in urls.items():
        secrets[f"{name} signature"] = url.split("X-Amz-Signature=")[1].split("&")[0]
    return runs, everything_written(s3, bucket, root, runs, inputs=("in/", "models/")), secrets, bucket


def in_control_files(where: str) -> bool:
    return where.endswith("/_manifest.json") or "/_progress/" in where


@pytest.mark.cluster
def test_a_presigned_input_url_never_reaches_logs_or_errors(presigned):
    runs, written, secrets, bucket = presigned
    assert runs["presigned"].returncode == 0, runs["presigned"].stderr[-3000:]
    assert "wrote 40 rows" in runs["presigned"].stdout
    failure = runs["presigned failure"]
    assert failure.returncode == 2 and ":301:" in failure.stderr and "malformed JSON" in failure.stderr
    # The error names the unit's URL, signature masked; no worker traceback repeats it.
    assert "Compute Failed" not in failure.stderr and "X-Amz-Signature=****" in failure.stderr
    manifest = json.loads(written[f"s3://{bucket}/out/_manifest.json"])
    assert manifest["spec"]["input"] == f"{os.environ['AWS_ENDPOINT_URL']}/{bucket}/in/good.jsonl"
    assert [leak for leak in leaks(written, secrets) if not in_control_files(leak[2])] == []


@pytest.mark.cluster
def test_a_presigned_input_url_never_reaches_the_manifest_or_progress_records(presigned):
    _, written, secrets, bucket = presigned
    assert f"s3://{bucket}/out/_manifest.json" in written
    assert leaks(written, secrets) == []


# --- redaction itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("cannot list https://user:pa55word@host/data/", "pa55word"),
        ("model 'https://ghp_TOKENxyz@host/m/' not found", "ghp_TOKENxyz"),
        ("http://h/k.jsonl?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=f00d1e:3:1: bad", "f00d1e"),
        ("?AWSAccessKeyId=AKIAXX&Signature=K6c%3D&x-amz-security-token=FwoGZX", "FwoGZX"),
        ("Location(storage_options={'key': 'plainkey', 'secret': 'plain secret', 'token': 'tok'})", "plain secret"),
        ('{"password": "hunter2", "client_secret": "c-s"}', "hunter2"),
        ("session token " + "IQoJb3JpZ2luX2VjEJr" + "aB3/+x" * 30 + " expired", "IQoJb3JpZ2luX2VjEJr"),
        ("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyzABCDEF1234 rejected", "hf_abcdefghijklmnopqrstuvwxyz"),
        ("key ASIAIOSFODNN7EXAMPLE expired", "ASIAIOSFODNN7EXAMPLE"),
    ],
)
def test_redact_text_masks_credentials(text, secret):
    assert secret not in (masked := redact_text(text)), masked


@pytest.mark.parametrize(
    "text",
    [
        "/tmp/pytest-of-root/pytest-84/test_secrets0/root/cwd/job.yaml",
        "s3://bucket/path@v2/part-00000.parquet",
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english@714eb0f",
        "sha256 " + "0123456789abcdef" * 4,
        "Key:       batchnlp-20261126T032441Z-425b2f3a-part-00003",
        "http://h/b/k.jsonl:401:2: malformed JSON",
        "max_tokens=512, tokens_per_batch=8192",
    ],
)
def test_redact_text_leaves_ordinary_text_alone(text):
    assert redact_text(text) == text


@pytest.fixture
def logging_state():
    """configure_logging changes process-wide state: put it back after the test."""
    import copy
    import logging

    import dask.config

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogRecordFactory(), copy.deepcopy(dask.config.config))
    yield
    root.handlers[:], level, factory, config = saved
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    dask.config.config.clear()
    dask.config.config.update(config)


def test_logging_redacts_records_of_every_logger_and_tracebacks(logging_state, capsys):
    import io
    import logging

    import dask.config

    configure_logging(logging.INFO)
    secret = "https://user:Pa55w0rdSecret@host/x?X-Amz-Signature=d00dfeed"
    # A library logger with its own handler that does not propagate (as distributed's may).
    own = io.StringIO()
    library = logging.getLogger("batchnlp-test-library")
    library.addHandler(logging.StreamHandler(own))
    library.propagate = False
    try:
        library.warning("fetching %s", secret)
        try:
            raise OSError(f"cannot read {secret}")
        except OSError:
            logging.getLogger("batchnlp.test").exception("read failed")
    finally:
        library.handlers.clear()
    printed = own.getvalue() + capsys.readouterr().err
    assert "fetching https://***@host/x?X-Amz-Signature=****" in printed and "OSError: cannot read" in printed
    assert "Pa55w0rdSecret" not in printed and "d00dfeed" not in printed
    assert "batchnlp.util.redaction" in dask.config.get(PRELOAD), "worker processes redact their own logs"
