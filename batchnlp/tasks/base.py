"""The task contract: a task turns a list of valid texts into one Arrow column, in three steps.

As transformers' pipelines split their work, a task is ``preprocess`` (texts and rows → model
inputs: token ids, plus what decoding needs), ``forward`` (model inputs → raw outputs, through the
worker's shared :class:`~batchnlp.inference.engine.Engine`) and ``postprocess`` (raw outputs →
the column); :meth:`Task.annotate` composes them. ``batchnlp plan`` runs ``preprocess`` alone,
on a task built without an engine, to count the tokens a run would feed the model.

The worker gives a task only rows whose text is a non-empty string, and that pass the task's
own :meth:`Task.row_problems` (qa's question), and puts nulls back in place for the rest; a
task never sees, and never has to account for, bad rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import load_tokenizer_and_config

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


@dataclass(kw_only=True)
class ModelInputs:
    """What ``preprocess`` hands ``forward``: one token-id sequence per model row (a text, or one of
    qa's windows), unpadded (the engine pads each batch); segment ids for models that take them. A
    task adds the fields its ``postprocess`` needs (qa: offsets, windows' rows)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None

    def text_tokens(self) -> np.ndarray:
        """The tokens the model runs for each text: one sequence per text here."""
        return self.lengths()

    def lengths(self) -> np.ndarray:
        """The tokens of each sequence."""
        return np.fromiter(map(len, self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def tokens_by_text(self, rows: np.ndarray, texts: int) -> np.ndarray:
        """The tokens of every sequence of each of ``texts`` texts, ``rows`` naming each sequence's text: what
        ``text_tokens`` gives where a text is cut into several sequences (qa's, ner's and chunks' windows)."""
        return np.bincount(rows, weights=self.lengths(), minlength=texts).astype(np.int64)


class Task(ABC):
    """One task kind: load once per worker in ``__init__``; call :meth:`annotate` once per unit.

    A new task implements:

    - :meth:`preprocess` (required): texts, and the unit's :attr:`input_columns`, → :class:`ModelInputs`
      holding every sequence of the unit (a long text may give several, as qa's windows) and whatever
      ``postprocess`` needs. No model here: ``batchnlp plan`` calls it on a task built with
      ``engine=None`` (tokenizer and config loaded, no weights) and counts its ``input_ids``.
    - :meth:`postprocess` (required): the inputs and ``forward``'s raw outputs → one value per text,
      as an array of :attr:`output_type`.
    - :meth:`forward` (optional): by default every sequence of the unit goes through one
      :meth:`Engine.run <batchnlp.inference.engine.Engine.run>` call (length-sorted token-budget
      batches across the whole unit, never a call per row or window) and gives one numpy row per
      sequence, in order, of :meth:`head`'s tensor. Override it to do more (classify rescores int8
      near-ties in fp32), not to batch differently.
    - :meth:`head` (optional): which model output ``forward`` keeps; ``logits`` by default.
    - :attr:`input_columns` and :meth:`row_problems` (optional): a task that reads a column besides
      the text names it and says which rows it cannot use.

    ``loader`` (a class attribute) loads the checkpoint's (tokenizer, model) for the engine.
    """

    loader: ClassVar[Callable[[Path, str], tuple[Any, Any]]]

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        """Without an ``engine`` the task holds its tokenizer and config alone: ``preprocess`` runs,
        ``forward`` does not (``self.model`` is None)."""
        self.spec = spec
        self.directory = directory
        self.engine = engine
        self.model: Any = None
        if engine is None:
            self.tokenizer, self.config = load_tokenizer_and_config(directory, spec.model)
        else:
            self.tokenizer, self.model = engine.load(directory, spec.model, type(self).loader)
            self.config = self.model.config

    @property
    def output_type(self) -> pa.DataType:
        """The Arrow type of the task's output column (:mod:`batchnlp.tasks.columns`)."""
        from batchnlp.tasks import TASKS

        return TASKS[self.spec.kind].output_type(self.spec)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns besides the text that :meth:`preprocess` reads (qa's question column); none here."""
        return ()

    def row_problems(self, table: pa.Table) -> list[str | None]:
        """Why this task cannot annotate each row of a unit, beyond its text (None: it can).

        A task that reads another column than the text (qa's question) checks it here, so that
        a bad value nulls this task's column for that row, with a reason in ``_error``, while
        the other tasks still annotate it.
        """
        return [None] * table.num_rows

    def annotate(self, texts: list[str], rows: pa.Table | None = None) -> tuple[pa.Array, BatchStats]:
        """One output value per text, in order, and the batching statistics.

        ``rows`` holds the same rows of the unit's table, restricted to :attr:`input_columns`
        (so a task that reads only the text costs no copy of the rest).
        """
        return self.complete(self.preprocess(texts, rows))

    def complete(self, inputs: ModelInputs) -> tuple[pa.Array, BatchStats]:
        """``forward`` then ``postprocess``: :meth:`annotate` of inputs already preprocessed."""
        outputs, stats = self.forward(inputs)
        return self.postprocess(inputs, outputs), stats

    @abstractmethod
    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        """Texts (and ``rows``, as :meth:`annotate` gets them) → the unit's model inputs."""

    def forward(self, inputs: ModelInputs) -> tuple[Any, BatchStats]:
        """Every sequence through the engine at once: one numpy row of :meth:`head` per sequence, in
        order, padded to its batch's width along the token axis, and the batching statistics."""
        pad_id = self.tokenizer.pad_token_id
        return self.engine.run(self.model, inputs.input_ids, pad_id, self.head, inputs.token_type_ids)

    @staticmethod
    def head(outputs: Any) -> Any:
        """The model output ``forward`` keeps, ``[batch, ...]``: the logits."""
        return outputs.logits

    @abstractmethod
    def postprocess(self, inputs: ModelInputs, outputs: Any) -> pa.Array:
        """``forward``'s raw outputs (with the inputs they came from) → one value per text."""


def value_problem(value: Any, what: str) -> str | None:
    """Why a string input (a text, a question) cannot be used, or None when it can."""
    if value is None:
        return f"{what} is null"
    if not value.strip():
        return f"{what} is empty or whitespace"
    return None
