from __future__ import annotations

import shutil

import pytest
import torch

from batchnlp.errors import ModelError
from batchnlp.models import check_ref, parse_ref, stage, weight_checksums
from tests.conftest import upload_dir


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
