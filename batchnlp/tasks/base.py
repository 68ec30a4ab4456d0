"""The task contract: a task turns a list of valid texts into one Arrow column.

The worker gives a task only rows whose text is a non-empty string, and puts nulls back
in place for the rest; a task never sees, and never has to account for, bad rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import pyarrow as pa

from batchnlp.engine import BatchStats, Engine
from batchnlp.spec import TaskSpec


class Task(ABC):
    """Load once per worker in ``__init__``; call :meth:`annotate` once per unit."""

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine, max_length: int | None) -> None:
        self.spec = spec
        self.directory = directory
        self.engine = engine
        self.requested_max_length = max_length

    @property
    @abstractmethod
    def output_type(self) -> pa.DataType:
        """The Arrow type of the task's output column."""

    @abstractmethod
    def annotate(self, texts: list[str]) -> tuple[pa.Array, BatchStats]:
        """One output value per text, in order, and the batching statistics."""
