"""ONNX exports cached per machine: one folder per model digest, head, precision and exporter.

A run's first worker exports the checkpoint (:mod:`.onnx_export`) and, for int8, quantises it;
every later worker and run on the machine opens the files (a second run pays nothing). Folders
live beside the staged models (``$BATCHNLP_CACHE/onnx/<key>/``), are built in a private folder
and renamed into place whole, under a lock so the workers of one machine export once between
them. The key covers the content digest of the checkpoint's files, so changed weights are
exported again, and this exporter's version and ONNX Runtime's minor version, whose quantiser
writes the int8 graph.

A graph keeps its weights in ``model.onnx.data`` beside it. ONNX files hold no code, but an
external-data entry names a file to read. ONNX Runtime (1.32, the version required) refuses a
graph whose external data is an absolute path, climbs out of the graph's folder with ``..``, or
is a link to a file outside it (``tests/unit/inference/test_onnx_backend.py`` shows each refusal),
so a tampered cache cannot make a worker read other files; :class:`OnnxModel` names the folder to
delete. Not parsing the graph here spares a worker importing ``onnx`` (0.5 s) when it is cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXPORT_VERSION = 3  # bump when onnx_export writes a different graph for the same weights
GRAPH = "model.onnx"
WEIGHTS = "model.onnx.data"


def cached(cache: Path, digest: str, head: str, precision: str) -> Path | None:
    """The cached graph file for ``(digest, head, precision)``, or None where there is none yet."""
    graph = _folder(cache, digest, head, precision) / GRAPH
    return graph if graph.exists() else None


def cached_export(cache: Path, digest: str, head: str, precision: str, export: Callable[[], Any]) -> tuple[Path, float]:
    """The graph file for ``(digest, head, precision)``, exported now if the cache lacks it, and the
    seconds this call spent exporting (0.0 when it was cached). ``export()`` gives the fp32
    ``onnx.ModelProto``; int8 is quantised from the cached fp32 graph (made first if missing)."""
    graph = cached(cache, digest, head, precision)
    if graph is not None:
        return graph, 0.0
    folder = _folder(cache, digest, head, precision)
    started = time.perf_counter()
    source = cached_export(cache, digest, head, "fp32", export)[0] if precision == "int8" else None
    with _locked(folder.with_name(f".{folder.name}.lock")):
        if not (folder / GRAPH).exists():  # another worker of this machine may have made it meanwhile
            with _building(folder) as partial:
                if source is None:
                    _save(export(), partial / GRAPH)
                else:
                    _quantise(source, partial / GRAPH)
    return folder / GRAPH, time.perf_counter() - started


def _folder(cache: Path, digest: str, head: str, precision: str) -> Path:
    """Where the export of ``(digest, head, precision)`` lives, by this exporter and ONNX Runtime's minor version."""
    import onnxruntime

    runtime = ".".join(onnxruntime.__version__.split(".")[:2])
    text = json.dumps([EXPORT_VERSION, runtime, digest, head, precision])
    return cache / "onnx" / f"{head}-{precision}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _save(proto: Any, graph: Path) -> None:
    import onnx

    onnx.save(proto, str(graph), save_as_external_data=True, location=WEIGHTS)


def _quantise(source: Path, graph: Path) -> None:
    """Dynamic int8 of ``source``: weights per output channel, activations per batch, as ONNX
    Runtime's quantiser makes them. The embeddings and the task head stay fp32: they read one
    token per row, where a quantisation error reaches the scores undamped."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node
            if node.op_type == "Gemm" or node.name.startswith("qa_outputs")]  # fmt: skip
    with _quiet_quantiser():
        quantize_dynamic(
            str(source),
            str(graph),
            op_types_to_quantize=["MatMul", "Attention", "MultiHeadAttention"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=head,
            use_external_data_format=True,
            # The fused operators (com.microsoft) defeat ONNX's shape inference: their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


@contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """Drop the records ONNX Runtime's quantiser logs on the root logger (a line per tensor, and advice
    to preprocess that does not apply to an exported transformer), and nothing else."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextmanager
def _building(folder: Path) -> Iterator[Path]:
    """A private folder to write into, renamed to ``folder`` when the block succeeds; removed otherwise."""
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        yield partial
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing): the workers of one machine export in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
