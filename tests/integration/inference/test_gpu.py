"""Checks that need a CUDA GPU: skipped elsewhere (CI has none), run on a GPU machine with

    python -m pytest tests/integration/inference/test_gpu.py

The GPU code paths also have CPU tests (device choice, pinning by environment, out-of-memory
split through an injected error); these confirm them on the real device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify
from batchnlp.testing import build_classifier
from tests.support import corpus
from tests.support.helpers import invoke, write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def classify(model_dir, device, precision, tokens_per_batch=None):
    spec = TaskSpec(name="t", kind="classify", model=str(model_dir))
    return Classify(spec, model_dir, Engine(device, precision, tokens_per_batch), None)


def scored(task, texts):
    column, stats = task.annotate(texts)
    values = column.to_pylist()
    return [v["label"] for v in values], np.array([v["score"] for v in values]), stats


@pytest.fixture(scope="module")
def texts():
    return corpus.texts(2000, seed=11)


def test_cuda_fp32_equals_cpu_fp32(tiny_model, texts):
    cpu_labels, cpu_scores, _ = scored(classify(tiny_model, "cpu", "fp32"), texts)
    gpu_labels, gpu_scores, stats = scored(classify(tiny_model, "cuda", "fp32"), texts)
    assert gpu_labels == cpu_labels
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
    assert stats.padded_tokens % 8 == 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_keep_99_percent_of_labels(tiny_model, texts, precision):
    reference, _, _ = scored(classify(tiny_model, "cuda", "fp32"), texts)
    labels, _, _ = scored(classify(tiny_model, "cuda", precision), texts)
    agreement = np.mean(np.array(labels) == np.array(reference))
    print(f"{precision}: labels equal to fp32 on {agreement:.2%} of {len(texts)} rows")
    assert agreement >= 0.99


def test_a_real_out_of_memory_splits_the_batch(tmp_path):
    model = build_classifier(tmp_path / "base", size="base")
    long_texts = [t for t in corpus.texts(4000, seed=3) if len(t) > 2000] * 4  # ~700 rows of 512 tokens
    reference, ref_scores, _ = scored(classify(model, "cuda", "bf16", 8192), long_texts)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2**30 / torch.cuda.get_device_properties(0).total_memory)
    try:
        labels, scores, stats = scored(classify(model, "cuda", "bf16", 2_000_000), long_texts)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert stats.oom_splits > 0
    assert labels == reference
    np.testing.assert_allclose(scores, ref_scores, atol=2e-2)


@pytest.mark.cluster
def test_a_job_runs_on_its_pinned_gpu_worker(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(corpus.texts(500))])
    result = invoke(source, tmp_path / "out", "--model", f"sentiment={tiny_model}", "--device", "auto")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["device"] == ["cuda"] and manifest["precision"] == ["bf16"]
    assert manifest["startup"]["first_row_s"] > 0
