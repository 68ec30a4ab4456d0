"""The onnxruntime backend: which backend runs what, the export against batchnlp's torch modules,
the per-machine cache of exports, and ONNX Runtime's refusal of a tampered one."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from batchnlp.errors import ModelError, SpecError
from batchnlp.inference import distilbert
from batchnlp.inference.backends import choose_backend
from batchnlp.inference.backends.onnx_cache import GRAPH, cached_export
from batchnlp.inference.backends.onnx_export import export
from batchnlp.inference.backends.onnx_runtime import OnnxModel
from batchnlp.inference.engine import Engine
from batchnlp.inference.models.load import load_question_answerer, load_sequence_classifier
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks.classify import Classify
from tests.support import corpus
from tests.unit.inference.test_encoder_families import build


@pytest.mark.parametrize(
    "asked, device, precision, installed, chosen",
    [
        ("auto", "cpu", "fp32", True, "onnxruntime"),
        ("auto", "cpu", "int8", True, "onnxruntime"),
        ("auto", "cpu", "fp32", False, "torch"),
        ("auto", "cpu", "bf16", True, "torch"),
        ("auto", "cuda", "bf16", True, "torch"),
        ("torch", "cpu", "fp32", True, "torch"),
        ("onnxruntime", "cpu", "int8", True, "onnxruntime"),
    ],
)
def test_auto_takes_onnxruntime_on_cpu_in_fp32_and_int8_only(asked, device, precision, installed, chosen):
    assert choose_backend(asked, device, precision, onnxruntime_installed=installed) == chosen


@pytest.mark.parametrize(
    "device, precision, installed, words",
    [("cuda", "bf16", True, "CPU in fp32 or int8"), ("cpu", "bf16", True, "not cpu bf16"),
     ("cpu", "fp32", False, "pip install onnxruntime")],
)  # fmt: skip
def test_onnxruntime_is_refused_where_it_cannot_run(device, precision, installed, words):
    with pytest.raises(SpecError, match=words):
        choose_backend("onnxruntime", device, precision, onnxruntime_installed=installed)


def test_the_spec_takes_a_backend_and_refuses_it_on_cuda():
    assert JobSpec.from_settings({"input": "a", "output": "b", "backend": "torch"}).backend == "torch"
    with pytest.raises(SpecError, match="backend onnxruntime runs on CPU"):
        JobSpec.from_settings({"input": "a", "output": "b", "backend": "onnxruntime", "device": "cuda"})
    with pytest.raises(SpecError, match="backend must be one of"):
        JobSpec.from_settings({"input": "a", "output": "b", "backend": "tensorrt"})


def padded(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids right-padded to the longest row, and their mask."""
    rng = np.random.default_rng(seed)
    ids, mask = np.zeros((len(lengths), max(lengths)), np.int64), np.zeros((len(lengths), max(lengths)), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length], mask[row, :length] = rng.integers(1000, 20000, length), 1
    return ids, mask


@pytest.mark.parametrize("head, loader", [("sequence_classifier", load_sequence_classifier),
                                          ("question_answerer", load_question_answerer)])  # fmt: skip
def test_the_export_computes_what_the_torch_modules_compute(tiny_model, qa_model, tmp_path, head, loader):
    """Fused attention over padded rows, and the classifier's first-token-only last layer."""
    import torch

    directory = tiny_model if head == "sequence_classifier" else qa_model
    model = distilbert.load(directory, head)
    graph, seconds = cached_export(tmp_path, "sha256:test", head, "fp32", lambda: export(model, "distilbert", head))
    assert seconds > 0 and graph.name == GRAPH
    onnx_model = OnnxModel(graph, model.config, threads=1)
    lengths = [2, 37, 9, 64, 64, 3]
    ids, mask = (torch.from_numpy(array) for array in padded(lengths))
    with torch.inference_mode():
        want, got = model(ids, mask), onnx_model(ids, mask)
    assert type(got) is type(want)
    for ours, theirs in zip(got, want, strict=True):
        for row, length in enumerate(lengths):  # QA's logits past a row's length are padding
            width = length if ours.ndim == 2 and head == "question_answerer" else None
            np.testing.assert_allclose(ours[row, :width].numpy(), theirs[row, :width].numpy(), atol=2e-5)


@pytest.mark.parametrize("head", ["classify", "qa"])
def test_bert_exports_too_with_its_token_types(tmp_path, head):
    """transformers' BERT classes: segment embeddings, the tanh pooler, the config's LayerNorm epsilon."""
    import torch

    from batchnlp.inference.models.load import _load  # the loader batchnlp runs, through transformers for BERT

    directory = build(tmp_path / "bert", "bert", head)
    kind = {"classify": "sequence_classifier", "qa": "question_answerer"}[head]
    _, model = _load(directory, "bert", kind, kind)
    graph = cached_export(tmp_path / "cache", "d", kind, "fp32", lambda: export(model, "bert", kind))[0]
    onnx_model = OnnxModel(graph, model.config, threads=1)
    lengths = [2, 30, 11]
    ids, mask = (torch.from_numpy(array % 90) for array in padded(lengths, seed=1))  # ids within the tiny vocabulary
    types = (torch.arange(ids.shape[1]) >= 5).long().expand_as(ids) * mask  # a question, then its context
    with torch.inference_mode():
        want, got = model(input_ids=ids, attention_mask=mask, token_type_ids=types), onnx_model(ids, mask, types)
        plain = model(input_ids=ids, attention_mask=mask), onnx_model(ids, mask)  # no segments: all 0
    for ours, theirs in [*zip(got, want.values(), strict=True), *zip(plain[1], plain[0].values(), strict=True)]:
        for row, length in enumerate(lengths):
            width = length if ours.ndim == 2 and head == "qa" else None
            np.testing.assert_allclose(ours[row, :width].numpy(), theirs[row, :width].numpy(), atol=2e-5)


def test_a_second_engine_opens_the_cached_export_without_reading_the_weights(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path))
    first = Engine("cpu", "fp32", backend="onnxruntime")
    first.load(tiny_model, str(tiny_model), load_sequence_classifier)
    assert first.export_seconds > 0 and first.backends == {str(tiny_model): "onnxruntime"}

    def unread(*args: object) -> None:
        raise AssertionError("a cached export reads no weights")

    monkeypatch.setattr(distilbert, "load", unread)
    second = Engine("cpu", "fp32", backend="onnxruntime")
    _, model = second.load(tiny_model, str(tiny_model), load_sequence_classifier)
    assert second.export_seconds == 0 and isinstance(model, OnnxModel) and model.config.num_labels == 2
    assert len(list((tmp_path / "onnx").glob("*/" + GRAPH))) == 1


def test_changed_weights_and_each_precision_get_their_own_export(tiny_model, tmp_path):
    calls = []

    def exported() -> object:
        calls.append(1)
        return export(distilbert.load(tiny_model, "sequence_classifier"), "distilbert", "sequence_classifier")

    first = cached_export(tmp_path, "sha256:one", "sequence_classifier", "fp32", exported)[0]
    assert cached_export(tmp_path, "sha256:one", "sequence_classifier", "fp32", exported) == (first, 0.0)
    other = cached_export(tmp_path, "sha256:two", "sequence_classifier", "fp32", exported)[0]
    int8 = cached_export(tmp_path, "sha256:two", "sequence_classifier", "int8", exported)[0]
    assert len(calls) == 2 and len({first.parent, other.parent, int8.parent}) == 3
    assert int8.with_name(int8.name + ".data").stat().st_size < other.with_name(other.name + ".data").stat().st_size


def test_workers_of_one_machine_export_once_between_them(tiny_model, tmp_path):
    calls = []

    def exported() -> object:
        calls.append(threading.get_ident())
        return export(distilbert.load(tiny_model, "sequence_classifier"), "distilbert", "sequence_classifier")

    graphs: list[Path] = []
    threads = [
        threading.Thread(target=lambda: graphs.append(cached_export(tmp_path, "d", "h", "fp32", exported)[0]))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(graphs)) == 1
    assert [p.name for p in (tmp_path / "onnx").iterdir() if not p.name.endswith(".lock")] == [graphs[0].parent.name]


@pytest.mark.parametrize("how", ["parent", "absolute", "link"])
def test_a_cached_export_reading_outside_its_folder_is_refused(tiny_model, tmp_path, how):
    """ONNX files hold no code, but external data names files: ONNX Runtime must not read others."""
    import onnx

    model = distilbert.load(tiny_model, "sequence_classifier")
    graph = cached_export(tmp_path, "d", "h", "fp32", lambda: export(model, "distilbert", "sequence_classifier"))[0]
    outside = tmp_path / "outside.data"
    shutil.copy(graph.with_name(GRAPH + ".data"), outside)  # readable bytes of the right size: only the path is wrong
    location = {"parent": "../outside.data", "absolute": str(outside), "link": "link.data"}[how]
    if how == "link":
        os.symlink(outside, graph.parent / "link.data")
    proto = onnx.load(str(graph), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    graph.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match=f"delete {graph.parent}"):
        OnnxModel(graph, model.config, threads=1)


def test_a_cache_it_cannot_write_leaves_the_model_on_torch(tiny_model, tmp_path, monkeypatch, caplog):
    """auto must never fail a job that torch would run: a cache it cannot write is said, not fatal."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "onnx").write_text("a file where the exports' folder goes: no folder can be made under it")
    monkeypatch.setenv("BATCHNLP_CACHE", str(cache))
    caplog.set_level(logging.WARNING, logger="batchnlp.inference.backends.onnx_runtime")
    engine = Engine("cpu", "fp32", backend="onnxruntime")
    Classify(TaskSpec(name="t", kind="classify", model="m"), tiny_model, engine, None)
    assert engine.backends == {"m": "torch"}
    assert any("cannot write the ONNX export" in r.getMessage() for r in caplog.records)


def test_int8_on_onnxruntime_rescores_near_ties_on_its_fp32_export(tiny_model, tmp_path, monkeypatch):
    """A margin of 0.99 calls every row a near tie: every label is then fp32's."""
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path))
    texts = corpus.texts(60, seed=3)
    spec = TaskSpec(name="t", kind="classify", model=str(tiny_model))
    fp32 = Classify(spec, tiny_model, Engine("cpu", "fp32", backend="onnxruntime"), None).annotate(texts)[0]
    engine = Engine("cpu", "int8", rescore_margin=0.99, backend="onnxruntime")
    column, stats = Classify(spec, tiny_model, engine, None).annotate(texts)
    assert stats.rescored == len(texts)
    assert column.field("label").to_pylist() == fp32.field("label").to_pylist()
    np.testing.assert_allclose(column.field("score").to_numpy(), fp32.field("score").to_numpy(), atol=1e-6)
    assert {p.name.split("-")[1] for p in (tmp_path / "onnx").iterdir() if p.is_dir()} == {"fp32", "int8"}


def test_another_family_runs_on_torch_and_says_so_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path / "cache"))
    directory = build(tmp_path / "roberta", "roberta", "classify")
    engine = Engine("cpu", "fp32", backend="onnxruntime")
    caplog.set_level(logging.WARNING, logger="batchnlp.inference.backends.onnx_runtime")
    tasks = [Classify(TaskSpec(name=n, kind="classify", model="roberta"), directory, engine, 64) for n in "ab"]
    assert engine.backends == {"roberta": "torch"} and tasks[0].model is tasks[1].model
    said = [r.getMessage() for r in caplog.records if "exports DistilBERT and BERT" in r.getMessage()]
    assert len(said) == 1 and "roberta checkpoint" in said[0]
    assert len(tasks[0].annotate(["a short text", "another one"])[0]) == 2
    assert not (tmp_path / "cache").exists(), "nothing is written for a model that does not export"


def test_the_plan_knows_what_the_backend_exports():
    """batchnlp plan decides which backend a task runs on without importing the exporter: both lists agree."""
    from batchnlp.inference.backends import ONNXRUNTIME_EXPORTS, task_backend
    from batchnlp.inference.backends.onnx_runtime import EXPORTED

    assert set(EXPORTED.values()) == ONNXRUNTIME_EXPORTS
    assert task_backend("onnxruntime", "distilbert", "load_question_answerer") == "onnxruntime"
    assert task_backend("onnxruntime", "bert", "load_encoder") == "torch"
    assert task_backend("onnxruntime", "roberta", "load_sequence_classifier") == "torch"
    assert task_backend("torch", "distilbert", "load_sequence_classifier") == "torch"
