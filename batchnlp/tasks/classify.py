"""Sequence classification (sentiment, topics, multi-label): the text-classification pipeline's
scoring, batched by token budget.

Scores follow ``transformers.pipeline("text-classification")``: sigmoid for multi-label
checkpoints (``problem_type: multi_label_classification``) and single-logit heads, softmax
otherwise; the label is the best-scoring one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.columns import LABEL_SCORE, with_label_order

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


class Classify(Task):
    """preprocess: truncated token ids per text; forward: logits (int8 near-ties rescored in fp32);
    postprocess: scores → label, score, top_k and probs."""

    loader = staticmethod(load_sequence_classifier)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        super().__init__(spec, directory, engine, max_length)
        config = self.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.sigmoid = config.problem_type == "multi_label_classification" or config.num_labels == 1
        limits = [max_length, self.tokenizer.model_max_length, config.max_position_embeddings]
        self.max_length = min(limit for limit in limits if limit)

    @property
    def output_type(self) -> pa.DataType:
        """The spec's type; with --keep-probs, the probs field names its labels in order."""
        kind = super().output_type
        return with_label_order(kind, self.labels) if self.spec.keep_probs else kind

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        """Token ids per text, truncated to ``max_length``; the engine builds its own masks (the
        tokenizer's triple the time)."""
        if not texts:
            return ModelInputs(input_ids=[])
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_attention_mask=False)
        return ModelInputs(input_ids=encoded["input_ids"])

    def forward(self, inputs: ModelInputs) -> tuple[np.ndarray, BatchStats]:
        """Logits ``[texts, labels]``; with int8, the rows too close to call are rerun in fp32."""
        rows, stats = super().forward(inputs)
        logits = np.stack(rows) if rows else np.zeros((0, len(self.labels)), dtype=np.float32)
        if self.engine.rescore_margin:
            self._rescore_near_ties(logits, inputs.input_ids, stats)
        return logits, stats

    def _rescore_near_ties(self, logits: np.ndarray, input_ids: list[list[int]], stats: BatchStats) -> None:
        """Rerun in fp32 the rows whose best two scores are within the engine's rescore margin, in place.

        int8 moves a score by a few hundredths at most, so only such rows can have changed label:
        rescored, every label is fp32's, whatever the row's batch mates. The fp32 model is loaded at
        the first such row (a worker whose rows are no ties never holds it: ~0.3 s and 270 MB for
        DistilBERT-base).
        """
        scores = _sigmoid(logits) if self.sigmoid else _softmax(logits)
        if scores.shape[1] < 2:  # one label: nothing to swap
            return
        top = np.sort(scores, axis=-1)[:, -2:]
        near = np.flatnonzero(top[:, 1] - top[:, 0] < self.engine.rescore_margin)
        if not len(near):
            return
        reference = self.engine.reference(self.directory, self.spec.model, load_sequence_classifier)
        exact, extra = self.engine.run(reference, [input_ids[i] for i in near], self.tokenizer.pad_token_id, self.head)
        logits[near] = np.stack(exact)
        stats.rescored += len(near)
        stats.engine_s += extra.engine_s

    def postprocess(self, inputs: ModelInputs, logits: np.ndarray) -> pa.Array:
        """Scores per label → the output struct (label, score, optional top_k list)."""
        scores = _sigmoid(logits) if self.sigmoid else _softmax(logits)
        best = scores.argmax(axis=-1)
        labels = np.asarray(self.labels, dtype=object)
        children = [pa.array(labels[best], pa.string()), pa.array(scores[np.arange(len(best)), best], pa.float32())]
        if self.spec.top_k:
            k = min(self.spec.top_k, len(self.labels))
            order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
            flat = pa.StructArray.from_arrays(
                [
                    pa.array(labels[order].ravel(), pa.string()),
                    pa.array(np.take_along_axis(scores, order, -1).ravel(), pa.float32()),
                ],
                fields=list(LABEL_SCORE),
            )
            offsets = pa.array(np.arange(0, len(best) * k + 1, k, dtype=np.int32))
            children.append(pa.ListArray.from_arrays(offsets, flat, type=pa.list_(LABEL_SCORE)))
        if self.spec.keep_probs:  # the same scores, every label's, in the model's label order
            width = len(self.labels)
            offsets = pa.array(np.arange(0, len(best) * width + 1, width, dtype=np.int32))
            children.append(pa.ListArray.from_arrays(offsets, pa.array(scores.ravel(), pa.float32())))
        return pa.StructArray.from_arrays(children, fields=list(self.output_type))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))
