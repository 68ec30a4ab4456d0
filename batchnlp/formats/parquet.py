"""Parquet: one unit per run of whole row groups, read with footer metadata only at plan time."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchnlp.errors import InputError
from batchnlp.formats.base import Format, ReadOptions, ReadResult, WorkUnit
from batchnlp.storage import InputFile


@dataclass(frozen=True)
class ParquetLayout:
    """Row counts of a file's row groups, from its footer."""

    row_groups: tuple[int, ...]
    schema: pa.Schema
    unit_format = "parquet"  # what its units' start and stop count: row groups

    @property
    def rows(self) -> int:
        return sum(self.row_groups)

    def cut(self, rows_per_unit: int) -> Iterator[tuple[int, int, int]]:
        """``(first_row_group, stop_row_group, rows)``; a row group is never split."""
        start, rows = 0, 0
        for group, count in enumerate(self.row_groups):
            rows += count
            if rows >= rows_per_unit:
                yield start, group + 1, rows
                start, rows = group + 1, 0
        if rows:
            yield start, len(self.row_groups), rows


def describe(fs: Any, file: InputFile, options: ReadOptions) -> ParquetLayout:
    """Read the footer only; a missing or non-string text column fails here."""
    with fs.open(file.path, "rb") as handle:
        try:
            meta = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{fs.unstrip_protocol(file.path)} is not a readable Parquet file: {e}") from e
        schema = _plain(meta.schema.to_arrow_schema())
    check_text_column(schema, options.text_column, fs.unstrip_protocol(file.path))
    return ParquetLayout(tuple(meta.row_group(group).num_rows for group in range(meta.num_row_groups)), schema)


def check_text_column(schema: pa.Schema, text_column: str, where: str) -> None:
    """A missing or non-string text column stops the job before any inference."""
    if text_column not in schema.names:
        raise InputError(
            f"{where} has no column {text_column!r}; columns found: {', '.join(schema.names)}. Pass --text-column NAME"
        )
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise InputError(
            f"{where}: column {text_column!r} is {kind}, not a string column; pick a string column with --text-column"
        )


def read(fs: Any, unit: WorkUnit, options: ReadOptions) -> ReadResult:
    """Whole row groups; a corrupt one stops the job naming the file and its row groups."""
    try:
        with fs.open(unit.path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(list(range(unit.start, unit.stop)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError) as e:
        if isinstance(e, (PermissionError, FileNotFoundError, ConnectionError, TimeoutError)):
            raise  # storage errors are not the file's fault: reported as such by the runner
        raise InputError(f"{fs.unstrip_protocol(unit.path)} row groups {unit.start}-{unit.stop - 1}: {e}") from e
    return ReadResult(table=table.cast(_plain(table.schema)), errors=[None] * table.num_rows)


def _plain(schema: pa.Schema) -> pa.Schema:
    """Dictionary-encoded columns as their values' type: the encoding is a file's storage detail,
    and files of one input that differ only in it must unify."""
    for index, column in enumerate(schema):
        if pa.types.is_dictionary(column.type):
            schema = schema.set(index, column.with_type(column.type.value_type))
    return schema


def write(table: pa.Table, metadata: Mapping[str, Any], compression: str = "zstd") -> bytes:
    """Serialise one part: same table and metadata in, same bytes out (no timestamps).

    ``compression`` is zstd, snappy or none.
    """
    merged = {**(table.schema.metadata or {}), b"batchnlp": json.dumps(metadata, sort_keys=True).encode()}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(merged), buffer, compression=compression)
    return buffer.getvalue()


def head(part: IO[bytes], n: int, compression: str) -> list[dict[str, Any]]:
    """The first ``n`` rows of a part, reading only the row groups they are in."""
    batch = next(pq.ParquetFile(part).iter_batches(batch_size=max(1, n)), None)
    return batch.to_pylist()[:n] if batch is not None else []


FORMAT = Format(
    name="parquet",
    suffix=".parquet",
    input_suffixes=(".parquet", ".pq"),
    compressions=("zstd", "snappy", "none"),
    describe=describe,
    read=read,
    write=write,
    head=head,
)
