"""Engine backends: what runs a model's forward pass under the engine's batches.

The tasks' stages (preprocess → forward → postprocess) and the engine's token-budget batching are
the same on every backend; a backend only turns a padded batch into the model's outputs.

- ``torch``: batchnlp's own DistilBERT modules (other families through transformers), on any
  device, in every precision; fp32 on CPU has its Linear layers on oneDNN
  (:mod:`batchnlp.inference.onednn`), int8 is :mod:`batchnlp.inference.int8`.
- ``onnxruntime``: the checkpoint exported by batchnlp to a graph of ONNX Runtime's fused CPU
  operators (:mod:`.onnx_export`), dynamic int8 per channel for ``--precision int8``, cached per
  model digest (:mod:`.onnx_cache`) and run by :mod:`.onnx_runtime`. CPU, fp32 and int8;
  DistilBERT and BERT checkpoints (another family runs on torch, said once in the worker's log).

``auto`` (:func:`choose_backend`) takes ONNX Runtime on CPU in fp32 and int8, where it was
measured faster (docs/performance.md, ``benchmarks/against_peers.py``), and torch everywhere else:
bf16 (ONNX Runtime's CPU kernels have no bf16 path) and CUDA (not yet measured against torch's).

Importing this package turns ONNX Runtime's telemetry off (``ORT_DISABLE_TELEMETRY=1``, unless
already set) before any batchnlp module imports ``onnxruntime``: its Linux build otherwise writes
a device id and an event store under ``~/.cache/Microsoft/DeveloperTools/`` at import, outside
anything a job was asked to write (``tests/integration/test_safety.py`` lists every file a job
writes).

May import: :mod:`batchnlp.errors` (this folder sits inside :mod:`batchnlp.inference`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from batchnlp.errors import SpecError

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

Backend = Literal["auto", "torch", "onnxruntime"]
# What the onnxruntime backend runs: the device and precisions its export and kernels cover, and the
# (model family, head) pairs it exports (a head is a loader's name less load_); any other runs on torch.
ONNXRUNTIME_RUNS = {("cpu", "fp32"), ("cpu", "int8")}
ONNXRUNTIME_EXPORTS = {
    ("distilbert", "sequence_classifier"),
    ("distilbert", "question_answerer"),
    ("bert", "sequence_classifier"),
    ("bert", "question_answerer"),
}


def choose_backend(backend: str, device: str, precision: str, *, onnxruntime_installed: bool) -> str:
    """``auto`` made concrete for a resolved device and precision; a backend that cannot run them refused.

    Pure (whether onnxruntime is installed is an argument) so every choice is tested anywhere.
    """
    runs_on_ort = (device, precision) in ONNXRUNTIME_RUNS
    if backend == "auto":
        return "onnxruntime" if runs_on_ort and onnxruntime_installed else "torch"
    if backend == "onnxruntime":
        if not runs_on_ort:
            raise SpecError(
                f"--backend onnxruntime runs on CPU in fp32 or int8, not {device} {precision}; "
                "use --backend torch (or auto) there"
            )
        if not onnxruntime_installed:
            raise SpecError("--backend onnxruntime needs the onnxruntime package: pip install onnxruntime onnx")
    return backend


def resolve_backend(backend: str, device: str, precision: str) -> str:
    """:func:`choose_backend` for this machine (where onnxruntime is installed or not)."""
    return choose_backend(backend, device, precision, onnxruntime_installed=onnxruntime_installed())


def onnxruntime_installed() -> bool:
    """Whether onnxruntime and onnx (for the export) can be imported here, without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def task_backend(backend: str, model_type: str | None, loader_name: str) -> str:
    """The backend a task's model runs on, given the run's resolved ``backend``: onnxruntime only for
    a checkpoint it exports (``batchnlp plan`` quotes that backend's throughput only then)."""
    exported = (model_type, loader_name.removeprefix("load_")) in ONNXRUNTIME_EXPORTS
    return backend if backend != "onnxruntime" or exported else "torch"
