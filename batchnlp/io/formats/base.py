"""What every format shares: the :class:`Format` each format module declares, the unit of work and
the result of reading one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa

from batchnlp.errors import InputError
from batchnlp.io.formats.decompress import DEFAULT_MAX_DECOMPRESSED_BYTES

if TYPE_CHECKING:
    from batchnlp.io.formats.hive import Partitioning

BadLinePolicy = Literal["stop", "skip", "quarantine"]
DEFAULT_MAX_LINE_BYTES = 8 << 20
# The stop of a compressed file's one unit: every line of it, however many its worker finds.
WHOLE_STREAM = -1
# Most uncompressed bytes a unit of a splittable file (Parquet) holds: a larger row group is
# split into row ranges, so a worker's memory does not grow with the writer's row group size.
UNIT_BYTES = 256 << 20


@dataclass(frozen=True)
class Format:
    """One file format, all batchnlp knows of it, declared once by its module (``FORMAT``).

    The registry (:data:`batchnlp.io.formats.FORMATS`) derives everything else from these: the
    spec's and the CLI's allowed input and output formats and compressions, how an input file is
    recognised by name, a part's suffix. A format that reads has ``describe`` and ``read``; one
    that writes has ``compressions`` (the default first) and ``write``; ``head`` reads a part back.
    """

    name: str
    suffix: str  # of the part files it writes, before a compression's own (``.gz``)
    input_suffixes: tuple[str, ...] = ()  # names it is recognised by as input
    input_compressions: tuple[str, ...] = ()  # compressed input it reads: suffixes after its own
    compressions: tuple[str, ...] = ()  # of the parts it writes, the default first; () = input only
    # (fs, file, options) -> a layout: rows, schema (None: the data tells), cut(rows_per_unit)
    describe: Callable[..., Any] | None = None
    read: Callable[..., ReadResult] | None = None  # (fs, unit, options) -> ReadResult
    write: Callable[..., bytes] | None = None  # (table, metadata, compression) -> the part's bytes
    head: Callable[[IO[bytes], int, str], list[dict[str, Any]]] | None = None  # (part, n, compression) -> rows


@dataclass(frozen=True)
class ReadOptions:
    """How every unit of a job is read.

    ``on_bad_lines`` decides what a line that is not a JSON object does (malformed JSON,
    invalid UTF-8, an array, a line past ``max_line_bytes``, the rest of a compressed file past
    its decompression cap): ``stop`` the job naming it, ``skip`` it (counted and reported),
    or ``quarantine`` it (also kept byte for byte under OUTPUT/_rejected/, a line past the cap by
    its first bytes). ``max_line_bytes`` also bounds a Parquet cell: a longer one rejects its row.
    ``partitioning`` (found at plan time) adds each file's Hive ``key=value`` directories as columns.
    """

    text_column: str = "text"
    on_bad_lines: BadLinePolicy = "stop"
    partitioning: Partitioning | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES


@dataclass(frozen=True)
class BadLine:
    """A source line that could not become a row; ``raw`` is its exact bytes, newline stripped."""

    line: int  # 1-based, in the source file
    reason: str
    raw: bytes


@dataclass(frozen=True, kw_only=True)
class WorkUnit:
    """A deterministic slice of one input file; the same input always plans the same units.

    ``start``/``stop`` mean what the format says: a byte range cut at line ends for plain
    JSONL, a line range for compressed JSONL (to :data:`WHOLE_STREAM`), a row-group range for
    Parquet, a row range within one row group for ``parquet-rows`` (a row group past
    :data:`UNIT_BYTES`, split).
    """

    index: int
    path: str
    format: str
    start: int
    stop: int
    rows: int | None = None
    # The file's partition values (as text) where its path does not carry them: a Delta log's.
    partition: dict[str, str | None] | None = None

    @property
    def id(self) -> str:
        return f"part-{self.index:05d}"

    def describe(self) -> str:
        if self.stop == WHOLE_STREAM:
            return f"{self.path} lines {self.start}-"
        kind = {"parquet": "row groups", "parquet-rows": "rows", "jsonl-lines": "lines"}.get(self.format, "bytes")
        return f"{self.path} {kind} {self.start}-{self.stop}"


@dataclass
class ReadResult:
    """The rows of one unit; ``errors[i]`` says why row ``i`` cannot be annotated (or None).

    Readers normalise the text column to ``string``; a value that was present but unusable
    (a number, a missing field) becomes null here and its reason goes to ``errors``.
    """

    table: pa.Table
    errors: list[str | None]
    bad_lines: list[BadLine] = field(default_factory=list)  # set aside under --on-bad-lines skip|quarantine


def unify(schemas: list[tuple[str, pa.Schema]]) -> pa.Schema:
    """One schema for every part, so multi-file readers see one table.

    Types are promoted as Arrow permits (null → any, int → double, struct fields merged);
    a real conflict (string here, number there) names the two places that disagree.
    """
    merged: pa.Schema | None = None
    first = ""
    for where, schema in schemas:
        try:
            merged = schema if merged is None else pa.unify_schemas([merged, schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
            raise InputError(
                f"the input's columns disagree in type between {first} and {where}: {e}. "
                "Make the column's type consistent across files"
            ) from e
        first = first or where
    return merged if merged is not None else pa.schema([])


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Reorder, widen and complete a unit's columns to the job's schema (absent columns as nulls)."""
    columns = []
    for column in schema:
        if column.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, column.type))
            continue
        try:
            columns.append(table.column(column.name).cast(column.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise InputError(f"{where}: column {column.name!r} cannot be read as {column.type}: {e}") from e
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())
