"""batchnlp's own DistilBERT modules compute what transformers' classes compute, load only the
checkpoints they reproduce exactly, and spare a worker transformers' modeling code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batchnlp.inference import distilbert
from batchnlp.inference.models.load import AUTO_CLASSES, load_sequence_classifier
from batchnlp.testing import build_classifier, build_question_answerer
from tests.support import corpus

TEXTS = corpus.texts(48, seed=11)


def reference(directory: Path, head: str, attention: str) -> torch.nn.Module:
    import transformers

    return getattr(transformers, AUTO_CLASSES[head]).from_pretrained(directory, attn_implementation=attention).eval()


def outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if hasattr(out, "logits"):
        return out.logits.numpy()
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("build", "head", "settings"),
    [
        (build_classifier, "sequence_classifier", {}),
        (build_classifier, "sequence_classifier", {"multi_label": True, "labels": ("a", "b", "c")}),
        (build_question_answerer, "question_answerer", {}),
    ],
    ids=["classifier", "multi-label", "qa"],
)
def test_the_same_outputs_as_transformers_on_padded_and_unpadded_batches(tmp_path, build, head, settings, attention):
    from transformers import AutoTokenizer

    directory = build(tmp_path / "m", **settings)
    ours = distilbert.load(directory, head)
    assert isinstance(ours, distilbert.HEADS[head])
    theirs = reference(directory, head, attention)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    padded = tokenizer(TEXTS, truncation=True, padding=True, return_tensors="pt")
    assert padded["attention_mask"].min() == 0, "rows of different lengths: the mask matters"
    np.testing.assert_allclose(outputs(ours, padded), outputs(theirs, padded), atol=1e-5)
    single = tokenizer(TEXTS[:1], return_tensors="pt")  # no padding at all: no mask
    np.testing.assert_allclose(outputs(ours, single), outputs(theirs, single), atol=1e-5)


def test_a_relu_checkpoint_saved_in_half_precision_loads_as_fp32(tmp_path):
    from transformers import AutoTokenizer

    directory = build_classifier(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "activation": "relu"}))
    theirs = reference(directory, "sequence_classifier", "sdpa")
    theirs.half().save_pretrained(directory)  # model.safetensors in fp16, config still relu
    ours = distilbert.load(directory, "sequence_classifier")
    assert ours is not None and {p.dtype for p in ours.parameters()} == {torch.float32}
    batch = AutoTokenizer.from_pretrained(directory)(TEXTS, truncation=True, padding=True, return_tensors="pt")
    np.testing.assert_allclose(outputs(ours, batch), outputs(theirs.float(), batch), atol=1e-5)


def test_checkpoints_it_does_not_reproduce_exactly_are_left_to_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    qa = build_question_answerer(tmp_path / "qa")
    assert distilbert.load(qa, "sequence_classifier") is None, "a QA checkpoint has no classifier head"
    _, model = load_sequence_classifier(qa, str(qa))  # transformers: a fresh head, as it always did
    assert type(model).__name__ == "DistilBertForSequenceClassification"

    extra = build_classifier(tmp_path / "extra")
    weights = load_file(extra / "model.safetensors")
    save_file({**weights, "vocab_projector.bias": torch.zeros(3)}, extra / "model.safetensors", {"format": "pt"})
    assert distilbert.load(extra, "sequence_classifier") is None, "a tensor it would not use"

    gelu_new = build_classifier(tmp_path / "gelu-new")
    config = json.loads((gelu_new / "config.json").read_text())
    (gelu_new / "config.json").write_text(json.dumps({**config, "activation": "gelu_new"}))
    assert distilbert.load(gelu_new, "sequence_classifier") is None, "an activation it does not implement"
    _, model = load_sequence_classifier(gelu_new, str(gelu_new))
    assert type(model).__module__.startswith("transformers.models.distilbert")


@pytest.mark.slow
def test_distilbert_tasks_never_import_transformers_modeling_code(tiny_model, qa_model):
    """The ~3 s a process spent importing it came before every worker's first row."""
    script = f"""
import sys
from pathlib import Path
from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify
from batchnlp.tasks.qa import QuestionAnswering
engine = Engine("cpu", "int8")
classify = Classify(TaskSpec("s", "classify", {str(tiny_model)!r}), Path({str(tiny_model)!r}), engine, None)
ask = TaskSpec("q", "qa", {str(qa_model)!r}, question="Who?", max_answer_length=15)
qa = QuestionAnswering(ask, Path({str(qa_model)!r}), engine, None)
classify.annotate(["a fine day", "a dreadful night that never ended"])
qa.annotate(["John bought the house."])
modeling = ("transformers.modeling_utils", "transformers.models.distilbert.modeling")
print(sorted(m for m in sys.modules if m.startswith(modeling)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
