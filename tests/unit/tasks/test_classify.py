"""Fidelity: our batched classification equals transformers' text-classification pipeline, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify
from tests.support import corpus

BACKENDS = ["torch", "onnxruntime"]


def make_task(model_dir, top_k=None, precision="fp32", tokens_per_batch=4096, backend="auto") -> Classify:
    spec = TaskSpec(name="t", kind="classify", model=str(model_dir), top_k=top_k)
    engine = Engine("cpu", precision, tokens_per_batch, backend=backend)
    task = Classify(spec, model_dir, engine, None)
    assert backend == "auto" or engine.backends[str(model_dir)] == backend
    return task


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus.texts(300, seed=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_and_scores_match_the_pipeline_on_varied_lengths(tiny_model, texts, backend):
    from transformers import pipeline

    task = make_task(tiny_model, backend=backend)
    lengths = [len(ids) for ids in task.tokenizer(texts)["input_ids"]]
    assert min(lengths) < 20 and max(lengths) > 512, "the corpus must cover short rows and truncation"

    expected = pipeline("text-classification", model=str(tiny_model), device="cpu")(
        texts, truncation=True, batch_size=1
    )
    column, stats = task.annotate(texts)

    got = column.to_pylist()
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-4)
    assert stats.tokens == sum(min(n, 512) for n in lengths)
    assert stats.padded_tokens < stats.tokens * 1.15, "length-sorted batches keep padding small"


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_matches_the_pipeline(topics_model, texts, backend):
    from transformers import pipeline

    expected = pipeline("text-classification", model=str(topics_model), device="cpu")(
        texts[:60], truncation=True, top_k=3, batch_size=1
    )
    column, _ = make_task(topics_model, top_k=3, backend=backend).annotate(texts[:60])
    for got, want in zip(column.to_pylist(), expected, strict=True):
        assert [item["label"] for item in got["top_k"]] == [item["label"] for item in want]
        np.testing.assert_allclose([item["score"] for item in got["top_k"]], [w["score"] for w in want], atol=1e-4)
        assert got["label"] == want[0]["label"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_label_checkpoints_use_sigmoid_scores(multilabel_model, texts, backend):
    from transformers import pipeline

    expected = pipeline("text-classification", model=str(multilabel_model), device="cpu")(
        texts[:40], truncation=True, top_k=None, batch_size=1
    )
    column, _ = make_task(multilabel_model, top_k=4, backend=backend).annotate(texts[:40])
    for got, want in zip(column.to_pylist(), expected, strict=True):
        scores = [item["score"] for item in got["top_k"]]
        np.testing.assert_allclose(scores, [w["score"] for w in want], atol=1e-4)
        assert sum(scores) != pytest.approx(1.0, abs=1e-3), "independent sigmoid scores, not a softmax"


def test_output_type_has_top_k_only_when_asked(topics_model):
    assert make_task(topics_model).output_type.names == ["label", "score"]
    assert make_task(topics_model, top_k=2).output_type.names == ["label", "score", "top_k"]


def test_no_texts_gives_an_empty_column(tiny_model):
    column, stats = make_task(tiny_model).annotate([])
    assert len(column) == 0 and stats.batches == 0


@pytest.mark.parametrize("precision, backend", [("bf16", "torch"), ("int8", "torch"), ("int8", "onnxruntime")])
def test_reduced_precisions_run_and_mostly_agree_with_fp32(tiny_model, texts, precision, backend):
    reference = [row["label"] for row in make_task(tiny_model, backend=backend).annotate(texts)[0].to_pylist()]
    task = make_task(tiny_model, precision=precision, backend=backend)
    labels = [row["label"] for row in task.annotate(texts)[0].to_pylist()]
    agreement = np.mean([a == b for a, b in zip(labels, reference, strict=True)])
    assert agreement >= 0.9
