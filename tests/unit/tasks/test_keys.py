"""Input keys: equal exactly when the answer must be equal (batchnlp.tasks.keys)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from batchnlp.spec import TaskSpec
from batchnlp.tasks import keys
from batchnlp.tasks.keys import bucket_of, input_keys, key_prefixes, namespace

SPEC = TaskSpec(name="sentiment", kind="sentiment", model="s3://models/sst2/")
ENGINE = {"device": "cpu", "precision": "fp32", "backend": "onnxruntime", "max_length": 512, "rescore_margin": 0.0}
DIGEST = "sha256:" + "ab" * 32


def space(spec: TaskSpec = SPEC, digest: str = DIGEST, **engine: object) -> str:
    return namespace(spec, digest, {**ENGINE, **engine})[0]


def test_exact_inputs_only():
    texts = ["thanks", "thanks", "Thanks", "thanks ", "a", "a\x1fb"]
    found = input_keys(space(), texts).to_pylist()
    assert found[0] == found[1] and len(set(found)) == 5
    # each input is framed by its length: a text and a question cannot run into each other
    split = input_keys(space(), ["ab", "a"], [["c", "bc"]]).to_pylist()
    assert split[0] != split[1]


@pytest.mark.parametrize(
    "changed",
    [
        {"digest": "sha256:" + "cd" * 32},
        {"spec": dataclasses.replace(SPEC, keep_probs=True)},
        {"spec": dataclasses.replace(SPEC, kind="classify", top_k=2)},
        {"spec": dataclasses.replace(SPEC, kind="embed", embed_dtype="float32")},
        {"precision": "int8"},
        {"backend": "torch"},
        {"max_length": 128},
        {"device": "cuda"},
    ],
)
def test_any_changed_setting_or_model_is_another_namespace(changed):
    assert space(**changed) != space()


def test_an_embed_dtype_added_later_leaves_other_tasks_namespaces_as_they_were():
    assert "embed_dtype" not in namespace(SPEC, DIGEST, ENGINE)[1]["settings"]
    embed = dataclasses.replace(SPEC, kind="embed", embed_dtype="float32")
    assert space(embed) != space(dataclasses.replace(embed, embed_dtype="float16"))


def test_a_ref_is_a_name_not_content_and_a_new_labels_version_misses_everything(monkeypatch):
    assert space(dataclasses.replace(SPEC, model="/models/sst2")) == space(), "the same digest under another path"
    before = space()
    monkeypatch.setattr(keys, "LABELS_VERSION", keys.LABELS_VERSION + 1)
    assert space() != before


def test_buckets_are_ranges_of_the_key_space():
    found = input_keys(space(), [f"text {i}" for i in range(2000)])
    prefixes, buckets = key_prefixes(found), bucket_of(found, 7)
    order = np.argsort(prefixes)
    assert (np.diff(buckets[order]) >= 0).all(), "sorted keys fall in ascending buckets"
    assert set(buckets) == set(range(7))
    assert bucket_of(found.slice(5, 3), 7).tolist() == buckets[5:8].tolist()


def test_a_setting_added_later_at_its_default_keeps_every_namespace():
    """A new TaskSpec field (at its default) must not make every cached label miss after an upgrade."""
    extended = dataclasses.make_dataclass(
        "TaskSpec", [("new_setting", str | None, dataclasses.field(default=None))], bases=(TaskSpec,), frozen=True
    )
    later = extended(name="sentiment", kind="sentiment", model="s3://models/sst2/")
    assert space(later) == space()
    assert space(extended(name="sentiment", kind="sentiment", model="s3://models/sst2/", new_setting="x")) != space()
