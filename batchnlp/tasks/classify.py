"""Sequence classification (sentiment, topics, multi-label): the text-classification pipeline's
scoring, batched by token budget.

Scores follow ``transformers.pipeline("text-classification")``: sigmoid for multi-label
checkpoints (``problem_type: multi_label_classification``) and single-logit heads, softmax
otherwise; the label is the best-scoring one.

One mechanism hands a row from a first model to a second one (:func:`hand_off`): the rows whose
best two scores the first model puts closer than a margin are labelled by the second instead.

- int8 rescoring: the int8 model first, the fp32 model of the same checkpoint second, within
  ``--rescore-margin`` (int8 moves a score by a few hundredths at most, so only those rows can
  have changed label).
- A cascade (``--cascade TASK=STUDENT``): the student first, the task's own model (the teacher,
  at the run's precision, its own int8 near ties rescored in fp32) second, within
  ``--cascade-margin``. The student runs at the run's precision and is not rescored: its close
  calls go to the teacher, not to its own fp32 copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.errors import ModelError
from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.tasks import DEFAULT_CASCADE_MARGIN
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.columns import LABEL_SCORE, LABELLERS, with_label_order
from batchnlp.util.redaction import redact_url

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it

STUDENT, TEACHER = LABELLERS


@dataclass(kw_only=True)
class ClassifyInputs(ModelInputs):
    """A cascade's inputs: the student's token ids, the texts (the teacher tokenises the rows it labels
    with its own tokenizer), and once ``forward`` has run, which rows the teacher labelled."""

    texts: list[str]
    by_teacher: np.ndarray | None = None


class Classify(Task):
    """preprocess: truncated token ids per text; forward: logits (a cascade's and int8's close calls
    handed to their second model); postprocess: scores → label, score, top_k, probs and model."""

    loader = staticmethod(load_sequence_classifier)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        super().__init__(spec, directory, engine, max_length)
        config = self.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.sigmoid = config.problem_type == "multi_label_classification" or config.num_labels == 1
        limits = [max_length, self.tokenizer.model_max_length, config.max_position_embeddings]
        self.max_length = min(limit for limit in limits if limit)
        self.requested_max_length = max_length
        # A cascade's first model (cascade_from), and where each of the teacher's labels is among its logits.
        self.student: Classify | None = None
        self.student_order: np.ndarray | None = None
        self.cascade_margin = DEFAULT_CASCADE_MARGIN if spec.cascade_margin is None else spec.cascade_margin

    def cascade_from(self, directory: Path) -> None:
        """Make this task a cascade: the student checkpoint at ``directory`` (staged from the spec's
        ``student``) labels every row first, on the same engine; this task's own model (the teacher)
        labels the rows the student calls closer than ``cascade_margin``.

        The student must have the teacher's labels (in any order: its scores are put in the teacher's)
        and score them the same way (softmax or sigmoid); a :class:`ModelError` names both refs if not.
        """
        spec = dataclasses.replace(self.spec, model=str(self.spec.student), student=None, cascade_margin=None)
        student = Classify(spec, directory, self.engine, self.requested_max_length)
        if sorted(student.labels) != sorted(self.labels) or student.sigmoid != self.sigmoid:

            def scoring(task: Classify) -> str:
                return f"{', '.join(task.labels)} ({'sigmoid' if task.sigmoid else 'softmax'})"

            raise ModelError(
                f"the cascade of task {self.spec.name!r} cannot hand rows from its student to its teacher: the "
                f"student {redact_url(spec.model)} labels {scoring(student)}, the teacher "
                f"{redact_url(self.spec.model)} labels {scoring(self)}. A student needs its teacher's labels "
                "(batchnlp distill saves them with it)"
            )
        self.student = student
        self.student_order = np.array([student.labels.index(label) for label in self.labels])

    @property
    def output_type(self) -> pa.DataType:
        """The spec's type; with --keep-probs, the probs field names its labels in order."""
        kind = super().output_type
        return with_label_order(kind, self.labels) if self.spec.keep_probs else kind

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        """Token ids per text, truncated to ``max_length``; the engine builds its own masks (the
        tokenizer's triple the time). A cascade's are its student's, and keep the texts."""
        if self.student is not None:
            return ClassifyInputs(input_ids=self.student.preprocess_own(texts), texts=list(texts))
        return ModelInputs(input_ids=self.preprocess_own(texts))

    def forward(self, inputs: ModelInputs) -> tuple[np.ndarray, BatchStats]:
        """Logits ``[texts, labels]`` of the model that labels each text, in this task's label order.

        Without a cascade, this task's model's (int8's close calls rescored in fp32). In a cascade,
        the student's, but the teacher's for the rows the student calls closer than the margin:
        ``inputs.by_teacher`` says which, and ``stats.labelled_by`` counts them.
        """
        if self.student is None or self.student_order is None or not isinstance(inputs, ClassifyInputs):
            return self.scores(inputs.input_ids)
        logits, stats = self.student.logits(inputs.input_ids)
        logits = np.ascontiguousarray(logits[:, self.student_order])
        texts = inputs.texts

        def teacher(rows: np.ndarray) -> tuple[np.ndarray, BatchStats]:
            return self.scores(self.preprocess_own([texts[i] for i in rows]))

        near = hand_off(logits, self.cascade_margin, self.sigmoid, teacher, stats)
        inputs.by_teacher = np.zeros(len(logits), dtype=bool)
        inputs.by_teacher[near] = True
        stats.labelled_by = {STUDENT: len(logits) - len(near), TEACHER: len(near)}
        return logits, stats

    def preprocess_own(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` for this task's own model (a cascade's teacher), whatever the student's."""
        if not texts:
            return []
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_attention_mask=False)
        return encoded["input_ids"]

    def scores(self, input_ids: list[list[int]]) -> tuple[np.ndarray, BatchStats]:
        """This task's own model's logits; with int8, the rows too close to call rerun in fp32 (:func:`hand_off`).

        The fp32 model is loaded at the first such row (a worker whose rows are no ties never holds it:
        ~0.3 s and 270 MB for DistilBERT-base). Rescored, every label is fp32's, whatever the row's batch mates.
        """
        logits, stats = self.logits(input_ids)
        if self.engine is not None and self.engine.rescore_margin:

            def fp32(rows: np.ndarray) -> tuple[np.ndarray, BatchStats]:
                reference = self.engine.reference(self.directory, self.spec.model, load_sequence_classifier)
                return self.logits([input_ids[i] for i in rows], reference)

            stats.rescored += len(hand_off(logits, self.engine.rescore_margin, self.sigmoid, fp32, stats))
        return logits, stats

    def logits(self, input_ids: list[list[int]], model: Any = None) -> tuple[np.ndarray, BatchStats]:
        """``[rows, labels]`` logits of ``model`` (default: this task's) at the engine's precision, none handed on."""
        rows, stats = self.engine.run(
            self.model if model is None else model, input_ids, self.tokenizer.pad_token_id, self.head
        )
        return (np.stack(rows) if rows else np.zeros((0, len(self.labels)), dtype=np.float32)), stats

    def postprocess(self, inputs: ModelInputs, logits: np.ndarray) -> pa.Array:
        """Scores per label → the output struct (label, score, optional top_k list, probs, model)."""
        scores = probabilities(logits, self.sigmoid)
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
            if self.spec.student:  # a cascade: which model labelled each row
                by_teacher = getattr(inputs, "by_teacher", None)
                if by_teacher is None:  # forward ran no student: this task's own model labelled them all
                    by_teacher = np.full(len(best), self.student is None)
                children.append(pa.array(np.where(by_teacher, TEACHER, STUDENT).tolist(), pa.string()))
        return pa.StructArray.from_arrays(children, fields=list(self.output_type))


def hand_off(
    logits: np.ndarray,
    margin: float,
    sigmoid: bool,
    second: Callable[[np.ndarray], tuple[np.ndarray, BatchStats]],
    stats: BatchStats,
) -> np.ndarray:
    """The rows whose best two scores in ``logits`` are closer than ``margin`` (:func:`close_calls`) get
    ``second(rows)``'s logits instead, in place; returns their indexes. int8 rescoring and the cascade
    are this one step with different models; ``second``'s engine time, waits, out-of-memory splits
    and rescored rows join ``stats`` (its tokens do not: those count the first model's pass)."""
    near = close_calls(probabilities(logits, sigmoid), margin)
    if len(near):
        replaced, extra = second(near)
        logits[near] = replaced
        stats.add_second_pass(extra)
    return near


def close_calls(scores: np.ndarray, margin: float) -> np.ndarray:
    """Indexes of the rows whose best two scores are closer than ``margin`` (none with one label, or margin 0)."""
    if not margin or scores.shape[1] < 2:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(best_two_gap(scores) < margin)


def best_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per row, its best score less its second best: the margin a cascade (and int8 rescoring) compares.
    ``batchnlp distill`` calibrates a cascade's margin on this same figure."""
    top = np.sort(scores, axis=-1)[:, -2:]
    return top[:, 1] - top[:, 0]


def probabilities(logits: np.ndarray, sigmoid: bool) -> np.ndarray:
    """The pipeline's scores: a sigmoid per label, or a softmax over them."""
    return _sigmoid(logits) if sigmoid else softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """A softmax over the last axis, shifted by its maximum (ner's tokens and zero-shot's labels use it too)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))
