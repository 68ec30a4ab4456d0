"""What every format shares: the unit of work and the result of reading one."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic slice of one input file; the same input always plans the same units.

    ``start``/``stop`` mean what the format says: a byte range cut at line ends for plain
    JSONL, a line range for compressed JSONL, a row-group range for Parquet.
    """

    index: int
    path: str
    format: str
    start: int
    stop: int
    rows: int | None = None

    @property
    def id(self) -> str:
        return f"part-{self.index:05d}"

    def describe(self) -> str:
        kind = {"parquet": "row groups", "jsonl": "bytes", "jsonl-lines": "lines"}[self.format]
        return f"{self.path} {kind} {self.start}-{self.stop}"


@dataclass
class ReadResult:
    """The rows of one unit; ``errors[i]`` says why row ``i`` cannot be annotated (or None).

    Readers normalise the text column to ``string``; a value that was present but unusable
    (a number, a missing field) becomes null here and its reason goes to ``errors``.
    """

    table: pa.Table
    errors: list[str | None]
