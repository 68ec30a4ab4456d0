"""int8 on CPU: per-token activation scales (batch mates change nothing) and fp32 rescoring of near ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchnlp.errors import SpecError
from batchnlp.inference.engine import Engine
from batchnlp.inference.int8 import Int8Linear, quantise
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks.classify import Classify
from tests.support import corpus


def test_a_rows_int8_result_does_not_depend_on_its_batch_mates():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = Int8Linear(linear)
    row = torch.randn(1, 7, 64)
    loud = torch.randn(3, 7, 64) * 100  # a per-batch scale would crush the quiet row's resolution
    alone = layer(row)
    batched = layer(torch.cat([loud, row, loud]))[3:4]
    assert torch.equal(alone, batched)
    relative = (alone - linear(row)).abs().max() / linear(row).abs().max()
    assert relative < 0.02, relative


def test_quantise_keeps_the_head_and_the_pooler_in_fp32(topics_model):
    from transformers import AutoModelForSequenceClassification

    model = quantise(AutoModelForSequenceClassification.from_pretrained(topics_model))
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["classifier"] == kinds["pre_classifier"] == "Linear"
    assert kinds["distilbert.transformer.layer.0.ffn.lin1"] == "Int8Linear"


def task(model_dir, precision: str, margin: float | None = None) -> Classify:
    spec = TaskSpec(name="t", kind="classify", model=str(model_dir), top_k=2)
    return Classify(spec, model_dir, Engine("cpu", precision, 4096, margin), None)


def models_held(classify: Classify) -> int:
    return len(classify.engine._loaded)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus.texts(200, seed=11)


def test_rows_within_the_margin_are_rescored_in_fp32(topics_model, texts):
    fp32 = task(topics_model, "fp32").annotate(texts)[0].to_pylist()
    column, stats = task(topics_model, "int8", 0.99).annotate(texts)  # every row is "near a tie"
    assert stats.rescored == len(texts)
    got = column.to_pylist()
    assert [r["label"] for r in got] == [r["label"] for r in fp32]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in fp32], atol=1e-5)


def test_margin_0_rescores_nothing_and_only_int8_near_ties_are_rescored(topics_model, texts):
    plain, stats = task(topics_model, "int8", 0.0).annotate(texts)
    assert stats.rescored == 0
    margins = [r["top_k"][0]["score"] - r["top_k"][1]["score"] for r in plain.to_pylist()]
    near = task(topics_model, "int8", 0.2)
    _, stats = near.annotate(texts)
    assert stats.rescored == sum(m < 0.2 for m in margins) > 0
    assert models_held(near) == 2  # the int8 model and, for the near ties, the fp32 one


def test_the_fp32_model_is_loaded_only_for_a_near_tie(topics_model, texts):
    plain = task(topics_model, "int8", 0.0).annotate(texts)[0].to_pylist()
    margins = [r["top_k"][0]["score"] - r["top_k"][1]["score"] for r in plain]
    clear = [text for text, margin in zip(texts, margins, strict=True) if margin > 0.2]
    near = [text for text, margin in zip(texts, margins, strict=True) if margin < 0.05]
    assert clear and near
    rescoring = task(topics_model, "int8", 0.1)
    assert rescoring.annotate(clear)[1].rescored == 0 and models_held(rescoring) == 1
    assert rescoring.annotate(near)[1].rescored == len(near) and models_held(rescoring) == 2


def test_fp32_and_bf16_engines_never_rescore(topics_model):
    assert Engine("cpu", "fp32", rescore_margin=0.5).rescore_margin == 0.0
    fp32 = task(topics_model, "fp32", 0.5)
    fp32.annotate(corpus.texts(20, seed=2))
    assert models_held(fp32) == 1


@pytest.mark.parametrize("margin, ok", [(0.05, True), (0, True), (1, False), (-0.1, False), ("x", False)])
def test_rescore_margin_setting(margin, ok):
    settings = {"input": "a", "output": "b", "precision": "int8", "rescore_margin": margin}
    if ok:
        assert JobSpec.from_settings(settings).rescore_margin == margin
    else:
        with pytest.raises(SpecError, match="rescore_margin must be"):
            JobSpec.from_settings(settings)
