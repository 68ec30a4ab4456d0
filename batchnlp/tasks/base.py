"""The task contract: a task turns a list of valid texts into one Arrow column.

The worker gives a task only rows whose text is a non-empty string, and that pass the task's
own :meth:`Task.row_problems` (qa's question), and puts nulls back in place for the rest; a
task never sees, and never has to account for, bad rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchnlp.inference.engine import BatchStats, Engine

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


class Task(ABC):
    """Load once per worker in ``__init__``; call :meth:`annotate` once per unit."""

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine, max_length: int | None) -> None:
        self.spec = spec
        self.directory = directory
        self.engine = engine
        self.requested_max_length = max_length

    @property
    def output_type(self) -> pa.DataType:
        """The Arrow type of the task's output column (:mod:`batchnlp.tasks.columns`)."""
        from batchnlp.tasks import TASKS

        return TASKS[self.spec.kind].output_type(self.spec)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns besides the text that :meth:`annotate` reads (qa's question column); none here."""
        return ()

    def row_problems(self, table: pa.Table) -> list[str | None]:
        """Why this task cannot annotate each row of a unit, beyond its text (None: it can).

        A task that reads another column than the text (qa's question) checks it here, so that
        a bad value nulls this task's column for that row, with a reason in ``_error``, while
        the other tasks still annotate it.
        """
        return [None] * table.num_rows

    @abstractmethod
    def annotate(self, texts: list[str], rows: pa.Table | None = None) -> tuple[pa.Array, BatchStats]:
        """One output value per text, in order, and the batching statistics.

        ``rows`` holds the same rows of the unit's table, restricted to :attr:`input_columns`
        (so a task that reads only the text costs no copy of the rest).
        """


def value_problem(value: Any, what: str) -> str | None:
    """Why a string input (a text, a question) cannot be used, or None when it can."""
    if value is None:
        return f"{what} is null"
    if not value.strip():
        return f"{what} is empty or whitespace"
    return None
