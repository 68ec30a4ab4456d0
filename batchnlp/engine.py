"""Runs a model over tokenised rows: device, precision, inference mode and token-budget batches.

Kept apart from the tasks so every task (classification now, QA windows later) gets the same
length sorting, padding to a multiple of 8 and precision handling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchnlp.batching import padded_length, token_budget_batches
from batchnlp.errors import SpecError


@dataclass
class BatchStats:
    """Where the compute went: real tokens vs tokens the model saw (padding included)."""

    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0


def resolve(device: str, precision: str) -> tuple[str, str]:
    """Turn ``auto`` into concrete choices for this machine, refusing combinations that cannot run."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device cuda was asked for, but this worker sees no CUDA device")
    if precision == "auto" and device == "cpu":
        precision = "fp32"
    elif precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and precision == "fp16":
        raise SpecError("--precision fp16 needs a CUDA device; on CPU use bf16 or int8")
    if device != "cpu" and precision == "int8":
        raise SpecError("--precision int8 (dynamic quantisation) runs on CPU only; on GPU use bf16 or fp16")
    return device, precision


class Engine:
    """One per worker: holds the resolved device and precision and runs batches."""

    def __init__(self, device: str, precision: str, tokens_per_batch: int) -> None:
        self.device, self.precision = resolve(device, precision)
        self.tokens_per_batch = tokens_per_batch

    def prepare(self, model: Any) -> Any:
        """Move and convert a freshly loaded fp32 CPU model for this engine."""
        import torch

        if self.precision == "int8":
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if self.device != "cpu":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
            model = model.to(device=self.device, dtype=dtype)
        return model

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
        """
        import torch

        stats = BatchStats()
        results: list[np.ndarray] = [np.empty(0)] * len(input_ids)
        lengths = [len(ids) for ids in input_ids]
        for batch in token_budget_batches(lengths, self.tokens_per_batch):
            width = padded_length(max(lengths[i] for i in batch))
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            types = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = torch.as_tensor(input_ids[index])
                mask[row, : lengths[index]] = 1
                if token_type_ids is not None:
                    types[row, : lengths[index]] = torch.as_tensor(token_type_ids[index])
            inputs = {"input_ids": ids, "attention_mask": mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = types
            with torch.inference_mode(), self._autocast():
                outputs = model(**{key: value.to(self.device) for key, value in inputs.items()})
                values = head(outputs).float().cpu().numpy()
            for row, index in enumerate(batch):
                results[index] = values[row]
            stats.tokens += sum(lengths[i] for i in batch)
            stats.padded_tokens += width * len(batch)
            stats.batches += 1
        return results, stats

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.device == "cpu" and self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
