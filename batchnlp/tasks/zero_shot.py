"""NLI-based zero-shot classification: each text scored against labels chosen at run time.

Scores equal ``transformers.pipeline("zero-shot-classification")``'s with the same checkpoint,
labels, template and ``multi_label``: every (text, hypothesis) pair — the hypothesis being
``--hypothesis`` with the label in its ``{}`` — goes through an NLI sequence classifier, truncated
``only_first`` (the text, never the hypothesis). The entailment logit is the one whose label in
the config's ``label2id`` starts with "entail" (any case), found as the pipeline finds it; a
checkpoint without one is refused (the pipeline only warns and reads the last logit).

- single-label: a softmax over the labels' entailment logits;
- multi-label (``--multi-label``, or one label only, as the pipeline forces it): per label, a
  softmax over its [contradiction, entailment] logits, the contradiction logit being index 0
  (the last one when entailment is index 0), as the pipeline takes it.

Unlike the pipeline, which runs one pair at a time, the pairs of every row of a unit go through
one :meth:`~batchnlp.inference.engine.Engine.run` call, sorted by length into token-budget
batches. With int8, a row whose best two label scores are closer than the rescore margin has
all its pairs run again in fp32 (:func:`batchnlp.tasks.classify.close_calls`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.errors import ModelError, SpecError
from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.tasks import DEFAULT_HYPOTHESIS
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.classify import close_calls, softmax
from batchnlp.tasks.columns import LABEL_SCORE, zero_shot_type
from batchnlp.util.redaction import redact_url

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


@dataclass(kw_only=True)
class Pairs(ModelInputs):
    """zero-shot's model inputs: one (text, hypothesis) pair per row and label, row by row
    (pair ``row * labels + label``)."""

    rows: int
    labels: int

    def text_tokens(self) -> np.ndarray:
        """The tokens of every pair of each text: one pair per label."""
        return self.lengths().reshape(self.rows, self.labels).sum(axis=1) if self.rows else np.zeros(0, np.int64)


def entailment_id(config: Any) -> int:
    """The pipeline's ``entailment_id``: the id of the first ``label2id`` label starting with
    "entail" (any case), -1 when none does."""
    for label, index in (getattr(config, "label2id", None) or {}).items():
        if str(label).lower().startswith("entail"):
            return int(index)
    return -1


def nli_problem(config: Any, ref: str) -> str | None:
    """Why the checkpoint's config is not an NLI classifier zero-shot can score with, or None."""
    labels = getattr(config, "label2id", None) or {}
    shown = ", ".join(map(str, labels)) or "none"
    named = getattr(config, "architectures", None) or []
    architectures = ", ".join(named) or "unknown"
    if named and not any(name.endswith("ForSequenceClassification") for name in named):
        return (
            f"model {redact_url(ref)} is not a sequence classifier (its config's architectures: {architectures}); "
            "--task zero-shot needs an NLI classifier, whose labels include entailment (e.g. contradiction, "
            "neutral, entailment)"
        )
    if entailment_id(config) < 0:
        return (
            f"model {redact_url(ref)} has no entailment label: its config's label2id holds {shown}, none starting "
            "with 'entail'. --task zero-shot needs an NLI classifier (labels such as contradiction, neutral, "
            "entailment); for a classifier of fixed labels use --task classify"
        )
    if len(labels) < 2 or getattr(config, "num_labels", len(labels)) < 2:
        return (
            f"model {redact_url(ref)} has a single label ({shown}); --task zero-shot needs an NLI classifier with "
            "contradiction and entailment labels"
        )
    return None


class ZeroShot(Task):
    """preprocess: a (text, hypothesis) pair per row and label, the text truncated; forward: the
    pairs' logits, batched across the unit; postprocess: label scores → best label, every label
    sorted by score, and with --keep-probs the scores in the spec's label order."""

    loader = staticmethod(load_sequence_classifier)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        from transformers import AutoConfig

        # Refused before the weights load: a QA checkpoint would load as a classifier with a random head.
        try:
            config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot read the config of model {redact_url(spec.model)!r}: {e}") from e
        if problem := nli_problem(config, spec.model):
            raise ModelError(problem)
        super().__init__(spec, directory, engine, max_length)
        self.labels = list(spec.labels or ())
        self.template = spec.hypothesis or DEFAULT_HYPOTHESIS
        self.hypotheses = [self.template.format(label) for label in self.labels]
        self.entailment = entailment_id(self.config)
        # The pipeline's contradiction logit for multi-label: index 0, or the last when entailment is 0.
        self.contradiction = -1 if self.entailment == 0 else 0
        # As the pipeline: one label is scored multi-label (a softmax over one label would be 1.0).
        self.multi_label = spec.multi_label or len(self.labels) == 1
        limits = [max_length, self.tokenizer.model_max_length, getattr(self.config, "max_position_embeddings", None)]
        self.max_length = min(limit for limit in limits if limit)
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names
        self._check_room()

    def _check_room(self) -> None:
        """Each hypothesis must leave room for some of the text: the pipeline would then stop truncating."""
        special = self.tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [len(ids) for ids in self.tokenizer(self.hypotheses, add_special_tokens=False)["input_ids"]]
        for hypothesis, length in zip(self.hypotheses, lengths, strict=True):
            if length + special >= self.max_length:
                raise SpecError(
                    f"the hypothesis {hypothesis!r} of task {self.spec.name!r} is {length} tokens; with "
                    f"{special} special tokens it leaves no room for the text within max_length {self.max_length}: "
                    "shorten the label or --hypothesis, or raise --max-length"
                )

    @property
    def output_type(self) -> pa.DataType:
        """The registry's type: the spec's labels name the probs field's order, so the driver's type is this one."""
        return zero_shot_type(self.spec)

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> Pairs:
        """One pair per text and label, the text first and truncated to fit ``max_length``."""
        if not texts:
            return Pairs(input_ids=[], rows=0, labels=len(self.labels))
        count = len(self.labels)
        premises = [text for text in texts for _ in range(count)]
        hypotheses = self.hypotheses * len(texts)
        encoded = self.tokenizer(
            premises,
            hypotheses,
            truncation="only_first",
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=self.token_types,
        )
        return Pairs(
            input_ids=encoded["input_ids"],
            token_type_ids=encoded["token_type_ids"] if self.token_types else None,
            rows=len(texts),
            labels=count,
        )

    def forward(self, inputs: ModelInputs) -> tuple[np.ndarray, BatchStats]:
        """Logits ``[rows, labels, classes]`` of every pair of the unit, from one engine run; with int8,
        a row whose best two label scores are closer than the rescore margin gets all its pairs' logits
        from the fp32 model instead (loaded at the first such row)."""
        assert isinstance(inputs, Pairs)
        logits, stats = self.logits(inputs.input_ids, inputs.token_type_ids)
        logits = logits.reshape(inputs.rows, inputs.labels, self.config.num_labels)
        if self.engine is not None and self.engine.rescore_margin and inputs.rows:
            near = close_calls(self.scores(logits), self.engine.rescore_margin)
            if len(near):
                reference = self.engine.reference(self.directory, self.spec.model, load_sequence_classifier)
                pairs = (near[:, None] * inputs.labels + np.arange(inputs.labels)).ravel()
                types = inputs.token_type_ids
                again, extra = self.logits(
                    [inputs.input_ids[i] for i in pairs],
                    [types[i] for i in pairs] if types is not None else None,
                    reference,
                )
                logits[near] = again.reshape(len(near), inputs.labels, self.config.num_labels)
                stats.add_second_pass(extra)
                stats.rescored += len(near)
        return logits, stats

    def logits(
        self, input_ids: list[list[int]], token_type_ids: list[list[int]] | None, model: Any = None
    ) -> tuple[np.ndarray, BatchStats]:
        """``[pairs, classes]`` logits of ``model`` (default: this task's), all pairs in one engine run."""
        rows, stats = self.engine.run(
            self.model if model is None else model, input_ids, self.tokenizer.pad_token_id, self.head, token_type_ids
        )
        classes = self.config.num_labels
        return (np.stack(rows) if rows else np.zeros((0, classes), dtype=np.float32)), stats

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """``[rows, labels]`` scores from ``[rows, labels, classes]`` logits, as the pipeline's postprocess."""
        logits = logits.astype(np.float32)
        if self.multi_label:
            return softmax(logits[..., [self.contradiction, self.entailment]])[..., 1]
        return softmax(logits[..., self.entailment])

    def postprocess(self, inputs: ModelInputs, logits: np.ndarray) -> pa.Array:
        """Per row: the best label and its score, every label by descending score (ties as the pipeline
        orders them: its ``reversed(argsort)``), and with --keep-probs the scores in the spec's order."""
        assert isinstance(inputs, Pairs)
        rows, count = inputs.rows, inputs.labels
        scores = self.scores(logits)
        order = np.argsort(scores, axis=-1)[:, ::-1]  # the pipeline's list(reversed(scores.argsort()))
        labels = np.asarray(self.labels, dtype=object)
        ranked = np.take_along_axis(scores, order, -1)
        offsets = pa.array(np.arange(0, rows * count + 1, count, dtype=np.int32))
        flat = pa.StructArray.from_arrays(
            [pa.array(labels[order].ravel(), pa.string()), pa.array(ranked.ravel(), pa.float32())],
            fields=list(LABEL_SCORE),
        )
        children = [
            pa.array(labels[order[:, 0]], pa.string()),
            pa.array(ranked[:, 0], pa.float32()),
            pa.ListArray.from_arrays(offsets, flat, type=pa.list_(LABEL_SCORE)),
        ]
        if self.spec.keep_probs:
            children.append(pa.ListArray.from_arrays(offsets, pa.array(scores.ravel(), pa.float32())))
        return pa.StructArray.from_arrays(children, fields=list(self.output_type))
