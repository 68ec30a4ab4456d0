"""`batchnlp models pull` / `ls`: checkpoints staged in (moto's) S3 from a directory or the Hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.inference.models.stage import check_ref, content_checksums, content_digest, weight_checksums


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"].removeprefix(prefix) for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])


def test_a_local_checkpoint_is_pulled_listed_and_refused_twice(s3, bucket, tiny_model, tmp_path):
    checkpoint = shutil.copytree(tiny_model, tmp_path / "sst2")
    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle: never copied")
    dest = f"s3://{bucket}/models/sst2/"
    result = invoke("models", "pull", str(checkpoint), dest)
    assert result.exit_code == 0, result.output
    copied = keys(s3, bucket, "models/sst2/")
    assert "model.safetensors" in copied and "config.json" in copied and "batchnlp-model.json" in copied
    assert "pytorch_model.bin" not in copied
    provenance = json.loads(s3.get_object(Bucket=bucket, Key="models/sst2/batchnlp-model.json")["Body"].read())
    assert provenance["files"]["model.safetensors"] == weight_checksums(tiny_model)["model.safetensors"]
    assert check_ref(dest, {}).startswith("etags:")
    digest = content_digest(content_checksums(checkpoint))
    assert provenance["digest"] == digest and f"pin it in a job spec as {dest}@{digest}" in result.output
    assert check_ref(f"{dest}@{digest}", {}) == digest, "the S3 copy has the directory's digest"

    again = invoke("models", "pull", str(checkpoint), dest)
    assert again.exit_code == 2 and "already holds files; pass --overwrite" in again.output
    s3.put_object(Bucket=bucket, Key="models/sst2/model-00002-of-00002.safetensors", Body=b"an older model's shard")
    s3.put_object(Bucket=bucket, Key="models/sst2/README.md", Body=b"not a model file: kept")
    replaced = invoke("models", "pull", str(checkpoint), dest, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "model-00002-of-00002.safetensors" not in keys(s3, bucket, "models/sst2/"), "stale model files go"
    assert "README.md" in keys(s3, bucket, "models/sst2/")
    assert check_ref(f"{dest}@{digest}", {}) == digest, "the prefix holds exactly the pulled checkpoint"

    listing = invoke("models", "ls", f"s3://{bucket}/models/")
    assert listing.exit_code == 0, listing.output
    assert f"s3://{bucket}/models/sst2" in listing.output and str(checkpoint) in listing.output


def test_a_local_pull_makes_its_destination_folder(tiny_model, tmp_path):
    dest = tmp_path / "models" / "sst2"
    result = invoke("models", "pull", str(tiny_model), str(dest))
    assert result.exit_code == 0, result.output
    assert check_ref(str(dest), {}) and (dest / "batchnlp-model.json").exists()


def test_a_hub_checkpoint_is_pulled_with_its_revision(s3, bucket, tiny_model, tmp_path):
    """The Hub is unreachable here: a Hub cache laid out as huggingface_hub writes it stands in."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--sst2"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    dest = f"s3://{bucket}/models/acme-sst2/"
    pulled = subprocess.run(
        [sys.executable, "-m", "batchnlp", "models", "pull", "acme/sst2", dest],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert f"copied acme/sst2 at revision {commit}" in pulled.stdout
    assert f"{dest}@{content_digest(content_checksums(tiny_model))}" in pulled.stdout
    provenance = json.loads(s3.get_object(Bucket=bucket, Key="models/acme-sst2/batchnlp-model.json")["Body"].read())
    assert (provenance["source"], provenance["revision"]) == ("acme/sst2", commit)
    listing = invoke("models", "ls", dest)
    assert f"acme/sst2@{commit}" in listing.output


def test_pull_names_what_is_wrong(s3, bucket, tmp_path):
    result = invoke("models", "pull", f"s3://{bucket}/models/x/", f"s3://{bucket}/models/y/")
    assert result.exit_code == 2 and "already in object storage" in result.output
    result = invoke("models", "pull", str(tmp_path), "s3://no-such-bucket-for-models/m/")
    assert result.exit_code == 2 and "has no config.json" in result.output
