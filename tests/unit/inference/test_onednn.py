"""fp32 on CPU runs every Linear on oneDNN (batchnlp.inference.onednn): same logits as the eager
model, on batchnlp's DistilBERT and on another encoder family through transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from batchnlp.inference.engine import Engine
from batchnlp.inference.models.load import load_sequence_classifier


def linears(model):
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


def logits(model, input_ids, mask):
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=mask).logits


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_a_cpu_fp32_engine_runs_distilbert_s_linears_on_onednn_with_the_same_logits(tiny_model):
    _, eager = load_sequence_classifier(tiny_model, str(tiny_model))
    _, prepared = Engine("cpu", "fp32", backend="torch").load(tiny_model, str(tiny_model), load_sequence_classifier)
    assert linears(eager) == {"Linear"} and linears(prepared) == {"MkldnnLinear"}
    input_ids = torch.randint(1000, 2000, (3, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 9:] = 0  # a padded row
    torch.testing.assert_close(logits(prepared, input_ids, mask), logits(eager, input_ids, mask), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_another_family_runs_on_onednn_too_and_int8_keeps_its_own_kernels():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    bert = BertForSequenceClassification(config).eval()
    input_ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(input_ids)
    expected = logits(bert, input_ids, mask)
    prepared = Engine("cpu", "fp32").prepare(bert)
    assert linears(prepared) == {"MkldnnLinear"}
    torch.testing.assert_close(logits(prepared, input_ids, mask), expected, atol=1e-5, rtol=0)
    quantised = Engine("cpu", "int8").prepare(BertForSequenceClassification(config).eval())
    assert "MkldnnLinear" not in linears(quantised), "int8 keeps its own per-token kernels"
