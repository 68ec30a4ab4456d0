"""Runs a model over tokenised rows: device, precision, inference mode and token-budget batches.

Kept apart from the tasks so every task (classification, QA windows) gets the same length
sorting, padding, precision handling, GPU input pipeline and out-of-memory recovery.

On CUDA the host never waits for the GPU inside a unit: a background thread pads the next
batches into pinned memory while the current one runs, copies are asynchronous, and outputs
stay on the device until the unit's last batch has been queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from batchnlp.errors import SpecError
from batchnlp.inference.backends import resolve_backend
from batchnlp.inference.batching import padded_length, token_budget_batches
from batchnlp.inference.heartbeat import beat
from batchnlp.util.compat import mkldnn_bf16_supported

logger = logging.getLogger(__name__)

# Token budget of one padded batch when none is given. A CPU core gains nothing past a few
# thousand tokens; a GPU needs tens of thousands to fill its matrix units.
DEFAULT_TOKENS_PER_BATCH = {"cpu": 8_192, "cuda": 262_144}
# int8 on CPU is bound by the memory its activations cross: batches whose activations stay in the
# caches run faster (DistilBERT-base, one thread, AVX-512: ~2,900 tokens/s at 768, ~1,800 at 7,680).
INT8_TOKENS_PER_BATCH = 1_024
# ONNX Runtime's CPU kernels, one thread, DistilBERT-base: 1,024-token batches beat 8,192 by ~10% in fp32 too.
ONNXRUNTIME_TOKENS_PER_BATCH = 1_024
# int8 rows whose best two label scores are closer than this are rescored in fp32 (Engine.rescore_margin).
# int8 moves a score by up to ~0.05, so a margin of 0.05 let rows through whose int8 gap had widened
# past it: 99.17% of fp32's labels on benchmarks/precision_agreement.py's harsh 4-label head; 0.1
# kept 100% (27% of its rows rescored; none of the random DistilBERT benchmark's, which are no ties).
# ONNX Runtime's int8 scales activations per batch, not per token, and moved a score by up to 0.094 on
# that head: 99.50% of fp32's labels at 0.1 (21.8% of rows rescored), 100% at 0.15 (34.8%). 0.15 as its
# default rescored about half the rows of the random DistilBERT benchmark, whose label gaps sit near
# 0.15, and made int8 slower than the ONNX Runtime script; 0.1 stays every backend's default.
DEFAULT_RESCORE_MARGIN = 0.1
# Batches padded ahead of the GPU by the input thread.
PREFETCH_BATCHES = 4


@dataclass
class BatchStats:
    """Where the compute went: real tokens vs tokens the model saw (padding included)."""

    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    oom_splits: int = 0
    input_wait_s: float = 0.0  # time the model's thread waited for a padded batch
    engine_s: float = 0.0  # time inside Engine.run: padding, the model, copies to the host (input_wait_s included)
    first_output_at: float | None = None  # wall clock when the first rows' outputs reached the host
    rescored: int = 0  # int8 rows too close to call, run again in fp32
    # A cascade's rows by the model that labelled them: {"student": n, "teacher": n} (batchnlp.tasks.classify).
    labelled_by: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchStats) -> None:
        self.rescored += other.rescored
        for model, rows in other.labelled_by.items():
            self.labelled_by[model] = self.labelled_by.get(model, 0) + rows
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.batches += other.batches
        self.oom_splits += other.oom_splits
        self.input_wait_s += other.input_wait_s
        self.engine_s += other.engine_s
        firsts = [t for t in (self.first_output_at, other.first_output_at) if t is not None]
        self.first_output_at = min(firsts, default=None)

    def add_second_pass(self, other: BatchStats) -> None:
        """A second model's pass over some of these rows (int8's fp32 rescoring, a cascade's teacher): its
        time, waits, out-of-memory splits and rescored rows join these; its tokens do not, since these
        count the first pass's."""
        self.engine_s += other.engine_s
        self.input_wait_s += other.input_wait_s
        self.oom_splits += other.oom_splits
        self.rescored += other.rescored


def default_tokens_per_batch(device: str, precision: str, backend: str = "torch") -> int:
    """The token budget of a batch when none is given (:data:`DEFAULT_TOKENS_PER_BATCH`; int8's and
    ONNX Runtime's own)."""
    if backend == "onnxruntime":
        return ONNXRUNTIME_TOKENS_PER_BATCH
    return INT8_TOKENS_PER_BATCH if precision == "int8" else DEFAULT_TOKENS_PER_BATCH[device]


def choose(device: str, precision: str, *, cuda: bool, cuda_bf16: bool) -> tuple[str, str]:
    """Turn ``auto`` into concrete choices, refusing combinations that cannot run.

    Pure (the machine's abilities are arguments) so the GPU choices are tested on CPU.
    ``auto`` is fp32 on CPU and bf16 on CUDA, or fp16 on GPUs without bf16 (before Ampere).
    """
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    elif device == "cuda" and not cuda:
        raise SpecError("--device cuda was asked for, but this worker sees no CUDA device")
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "bf16" if cuda_bf16 else "fp16"
    if device == "cpu" and precision == "fp16":
        raise SpecError("--precision fp16 needs a CUDA device; on CPU use bf16 or int8")
    if device != "cpu" and precision == "int8":
        raise SpecError("--precision int8 (dynamic quantisation) runs on CPU only; on GPU use bf16 or fp16")
    return device, precision


def resolve(device: str, precision: str) -> tuple[str, str]:
    """:func:`choose` for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    return choose(device, precision, cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported())


def token_mask(lengths: Sequence[int], width: int) -> np.ndarray:
    """``[len(lengths), width]`` booleans, True where a row has a token (its first ``length`` places)."""
    return np.arange(width) < np.asarray(lengths, dtype=np.int64)[:, None]


def pad_batch(rows: Sequence[Sequence[int]], mask: np.ndarray, fill: int) -> np.ndarray:
    """``rows`` as one int64 matrix shaped like ``mask`` (their :func:`token_mask`), right-padded with ``fill``."""
    matrix = np.full(mask.shape, fill, dtype=np.int64)
    matrix[mask] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(mask.sum()))
    return matrix


class Engine:
    """One per worker: holds the resolved device, precision and backend, and runs batches.

    ``backend`` (:mod:`batchnlp.inference.backends`) is what runs the forward pass: a model the
    onnxruntime backend does not export runs on torch, and :attr:`backends` says which ran each.
    ``digests`` maps a checkpoint's directory to its content digest where the worker knows it from
    staging, so the ONNX cache is looked up without hashing the weights again.
    """

    def __init__(
        self,
        device: str,
        precision: str,
        tokens_per_batch: int | None = None,
        rescore_margin: float | None = None,
        backend: str = "auto",
    ) -> None:
        self.device, self.precision = resolve(device, precision)
        self.backend = resolve_backend(backend, self.device, self.precision)
        self.tokens_per_batch = tokens_per_batch or default_tokens_per_batch(self.device, self.precision, self.backend)
        self.backends: dict[str, str] = {}  # model ref → the backend its model runs on
        self.export_seconds = 0.0  # spent exporting models to ONNX in this process (0 when cached)
        self.digests: dict[Path, str] = {}
        # Which int8 results are too close to call, so that a task runs them again in fp32 (reference()).
        margin = DEFAULT_RESCORE_MARGIN if rescore_margin is None else rescore_margin
        self.rescore_margin = margin if self.precision == "int8" else 0.0
        # Tensor cores want widths in multiples of 8; a CPU's vector units gain nothing from
        # padding, so there every padded token would be wasted work.
        self.pad_multiple = 8 if self.device == "cuda" else 1
        self._loaded: dict[tuple[Any, ...], tuple[Any, Any, str]] = {}  # (tokenizer, model, backend) per checkpoint
        if self.device == "cpu" and self.precision == "bf16" and not mkldnn_bf16_supported():
            logger.warning(
                "--precision bf16 on a CPU without native bf16 units (AVX-512 BF16 or AMX) runs emulated, "
                "several times slower than fp32; use --precision int8 for speed on this machine"
            )

    def load(self, directory: Path, ref: str, loader: Callable[[Path, str], tuple[Any, Any]]) -> tuple[Any, Any]:
        """``loader(directory, ref)``'s (tokenizer, model), the model prepared for this engine, once per
        checkpoint and loader: tasks asking one model different questions share its weights, however
        their refs spell its directory (``./m`` and ``/jobs/m``)."""
        key = (Path(directory).resolve(), loader)
        if key not in self._loaded:
            tokenizer, model, backend = self._load(directory, ref, loader, self.precision)
            self._loaded[key] = (tokenizer, self.prepare(model) if backend == "torch" else model, backend)
        tokenizer, model, self.backends[ref] = self._loaded[key]
        return tokenizer, model

    def reference(self, directory: Path, ref: str, loader: Callable[[Path, str], tuple[Any, Any]]) -> Any:
        """The fp32 model of :meth:`load`'s checkpoint, for int8 rows that are too close to call (None when
        this engine rescores nothing), on the same backend. Loaded once per checkpoint, as :meth:`load`'s."""
        if not self.rescore_margin:
            return None
        key = (Path(directory).resolve(), loader, "fp32")
        if key not in self._loaded:
            self._loaded[key] = self._load(directory, ref, loader, "fp32")
        return self._loaded[key][1]

    def _load(
        self, directory: Path, ref: str, loader: Callable[[Path, str], tuple[Any, Any]], precision: str
    ) -> tuple[Any, Any, str]:
        """(tokenizer, model, the backend it runs on): the loader's fp32 torch model, or on the
        onnxruntime backend an :class:`~batchnlp.inference.backends.onnx_runtime.OnnxModel` where the
        checkpoint exports."""
        if self.backend != "onnxruntime":
            return (*loader(directory, ref), "torch")
        from batchnlp.inference.backends import onnx_runtime
        from batchnlp.inference.models.stage import content_checksums, content_digest

        resolved = Path(directory).resolve()
        digest = self.digests.get(resolved) or content_digest(content_checksums(resolved))
        tokenizer, model = onnx_runtime.load(directory, ref, loader, precision, digest)
        if isinstance(model, onnx_runtime.OnnxModel):
            self.export_seconds += model.export_seconds
            return tokenizer, model, "onnxruntime"
        return tokenizer, model, "torch"  # onnx_runtime.load said why

    def prepare(self, model: Any) -> Any:
        """Move and convert a freshly loaded fp32 CPU model for this engine."""
        import torch

        if self.precision == "int8":
            from batchnlp.inference.int8 import quantise

            return quantise(model)
        if self.device == "cpu" and self.precision == "fp32":
            from batchnlp.inference.onednn import onednn_linears

            return onednn_linears(model)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        if self.device != "cpu":
            # cuDNN's attention builds a plan per new (rows, width) shape, ~6 ms of host time
            # each, and batch shapes rarely repeat: measured on an H200, it held the GPU at
            # 290k tokens/s. The memory-efficient kernel takes padding masks with no plans.
            torch.backends.cuda.enable_cudnn_sdp(False)
        return model.to(device=self.device, dtype=dtype)

    def run(
        self,
        model: Any,
        input_ids: Sequence[Sequence[int]],
        pad_id: int,
        head: Callable[[Any], Any],
        token_type_ids: Sequence[Sequence[int]] | None = None,
    ) -> tuple[list[np.ndarray], BatchStats]:
        """Run ``model`` over every row; ``head(outputs)`` picks a ``[batch, ...]`` tensor.

        ``token_type_ids`` (one list per row, padded with 0) is for models that tell a question
        from its context by segment, such as BERT; DistilBERT takes none. Returns one numpy row
        per input row, in input order, still padded to its batch's width along the token axis.
        A batch that runs out of device memory is split in two and retried.
        """
        stats = BatchStats()
        started = time.perf_counter()
        lengths = [len(ids) for ids in input_ids]
        batches = [
            (batch, padded_length(max(lengths[i] for i in batch), self.pad_multiple))
            for batch in token_budget_batches(lengths, self.tokens_per_batch, self.pad_multiple)
        ]
        stats.tokens = sum(lengths)
        stats.padded_tokens = sum(width * len(batch) for batch, width in batches)
        stats.batches = len(batches)

        def inputs(sized: tuple[list[int], int]) -> dict[str, Any]:
            import torch

            batch, width = sized
            mask = token_mask([lengths[i] for i in batch], width)
            arrays = {
                "input_ids": pad_batch([input_ids[i] for i in batch], mask, pad_id),
                "attention_mask": mask.astype(np.int64),
            }
            if token_type_ids is not None:
                arrays["token_type_ids"] = pad_batch([token_type_ids[i] for i in batch], mask, 0)
            tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
            if self.device != "cpu":
                tensors = {key: value.pin_memory() for key, value in tensors.items()}
            return tensors

        outputs: list[tuple[list[int], Any]] = []
        feed = _prefetch(batches, inputs) if self.device != "cpu" else ((b, inputs(b)) for b in batches)
        clock = time.perf_counter()
        for (batch, _), tensors in feed:
            stats.input_wait_s += time.perf_counter() - clock
            outputs.extend(self._forward(model, batch, tensors, head, stats))
            beat()  # the unit is alive: the driver's stall check listens for this
            if stats.first_output_at is None:  # the first rows are out: the start-up figure
                outputs = [(rows, _to_host(values)) for rows, values in outputs]
                stats.first_output_at = time.time()
            clock = time.perf_counter()

        results: list[np.ndarray] = [np.empty(0)] * len(input_ids)
        for batch, values in outputs:
            host = _to_host(values)
            for row, index in enumerate(batch):
                results[index] = host[row]
        stats.engine_s = time.perf_counter() - started
        return results, stats

    def _forward(
        self, model: Any, batch: list[int], tensors: dict[str, Any], head: Callable[[Any], Any], stats: BatchStats
    ) -> list[tuple[list[int], Any]]:
        """``[(rows, outputs)]`` for one batch, halving it on out-of-memory until it fits."""
        import torch

        try:
            with torch.inference_mode():
                device_inputs = {key: value.to(self.device, non_blocking=True) for key, value in tensors.items()}
                return [(batch, head(model(**device_inputs)).float())]
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
        if self.device != "cpu":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        stats.oom_splits += 1
        # Later units start from budgets that fit; halving is for the rare long-row batch.
        self.tokens_per_batch = max(self.pad_multiple, min(self.tokens_per_batch, tensors["input_ids"].numel() // 2))
        logger.warning(
            "out of memory on a batch of %d rows × %d tokens: split in two and retried; token budget now %d",
            len(batch),
            tensors["input_ids"].shape[1],
            self.tokens_per_batch,
        )
        first = {key: value[:half] for key, value in tensors.items()}
        second = {key: value[half:] for key, value in tensors.items()}
        return self._forward(model, batch[:half], first, head, stats) + self._forward(
            model, batch[half:], second, head, stats
        )


def _to_host(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()


def _prefetch(batches: Sequence[Any], build: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """Yield ``(batch, build(batch))`` with up to PREFETCH_BATCHES built ahead on a thread.

    Padding and pinning release the GIL for most of their time, so they overlap the model's
    kernel launches; an exception in the thread reaches the consumer at the batch it hit.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()

    def produce() -> None:
        for batch in batches:
            try:
                item: Any = (batch, build(batch))
            except BaseException as error:  # handed to the consumer, raised there
                item = error
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or isinstance(item, BaseException):
                return

    thread = threading.Thread(target=produce, name="batchnlp-prefetch", daemon=True)
    thread.start()
    try:
        for _ in batches:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
