"""Parquet: one unit per run of whole row groups (or a row range of one too large for a unit), planned
from footer metadata only, read in record batches with every cell bounded by ``--max-line-bytes``."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchnlp.errors import InputError
from batchnlp.io.formats.base import UNIT_BYTES, Format, ReadOptions, ReadResult, WorkUnit
from batchnlp.io.storage import InputFile

BATCH_BYTES = 4 << 20  # a record batch's rows, by the footer's average row size
READ_BUFFER = 1 << 20  # a column chunk is read through this, not whole
_BYTES_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


@dataclass(frozen=True)
class ParquetLayout:
    """Row counts and uncompressed sizes of a file's row groups, from its footer."""

    row_groups: tuple[int, ...]
    schema: pa.Schema
    group_bytes: tuple[int, ...] = ()  # uncompressed, as the footer says; () : not known

    @property
    def rows(self) -> int:
        return sum(self.row_groups)

    def cut(self, rows_per_unit: int) -> Iterator[tuple[str, int, int, int]]:
        """``(format, start, stop, rows)``: runs of whole row groups of about ``rows_per_unit`` rows and at
        most :data:`UNIT_BYTES`; a row group larger than that alone is split into ``parquet-rows`` units
        (row ranges of the file), so a worker never holds a writer's 2 GB row group at once."""
        start, rows, size, first_row = 0, 0, 0, 0
        sizes = self.group_bytes or (0,) * len(self.row_groups)
        for group, (count, group_size) in enumerate(zip(self.row_groups, sizes, strict=True)):
            if group_size > UNIT_BYTES and count > 1:
                if group > start:
                    yield "parquet", start, group, rows
                pieces = min(count, -(-group_size // UNIT_BYTES))
                bounds = [first_row + count * i // pieces for i in range(pieces + 1)]
                for low, high in itertools.pairwise(bounds):
                    yield "parquet-rows", low, high, high - low
                start, rows, size = group + 1, 0, 0
            else:
                rows, size = rows + count, size + group_size
                if rows >= rows_per_unit or size >= UNIT_BYTES:
                    yield "parquet", start, group + 1, rows
                    start, rows, size = group + 1, 0, 0
            first_row += count
        if rows:
            yield "parquet", start, len(self.row_groups), rows


def describe(fs: Any, file: InputFile, options: ReadOptions) -> ParquetLayout:
    """Read the footer only; a missing or non-string text column fails here."""
    with fs.open(file.path, "rb") as handle:
        try:
            meta = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{fs.unstrip_protocol(file.path)} is not a readable Parquet file: {e}") from e
        schema = _plain(meta.schema.to_arrow_schema())
    check_text_column(schema, options.text_column, fs.unstrip_protocol(file.path))
    groups = [meta.row_group(group) for group in range(meta.num_row_groups)]
    return ParquetLayout(tuple(g.num_rows for g in groups), schema, tuple(g.total_byte_size for g in groups))


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
    """The unit's rows in record batches of about :data:`BATCH_BYTES`, every column (each passes
    through to the output); a corrupt row group stops the job naming the file and its row groups.

    Nothing is pre-buffered: a column chunk is read through a small buffer as its pages are
    decoded, so a unit holds its rows and one batch, never a whole row group's chunks besides.
    """
    try:
        with fs.open(unit.path, "rb") as handle:
            file = pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER)
            groups, skip, take = _selection(file.metadata, unit)
            meta = [file.metadata.row_group(g) for g in groups]
            row_bytes = sum(g.total_byte_size for g in meta) / max(1, sum(g.num_rows for g in meta))
            batches = file.iter_batches(batch_size=max(1, int(BATCH_BYTES // max(1.0, row_bytes))), row_groups=groups)
            schema = _plain(file.schema_arrow)
            kept, errors = [], []
            for batch in _rows(batches, skip, take):
                batch, reasons = _capped(batch.cast(schema), options.max_line_bytes)
                kept.append(batch)
                errors.extend(reasons)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError) as e:
        if isinstance(e, (PermissionError, FileNotFoundError, ConnectionError, TimeoutError)):
            raise  # storage errors are not the file's fault: reported as such by the runner
        kind = "row groups" if unit.format == "parquet" else "rows"
        raise InputError(f"{fs.unstrip_protocol(unit.path)} {kind} {unit.start}-{unit.stop - 1}: {e}") from e
    return ReadResult(table=pa.Table.from_batches(kept, schema=schema), errors=errors)


def _selection(meta: pq.FileMetaData, unit: WorkUnit) -> tuple[list[int], int, int | None]:
    """The row groups a unit reads, the rows of them to skip, and how many to take (None: all)."""
    if unit.format != "parquet-rows":
        return list(range(unit.start, unit.stop)), 0, None
    first = 0
    for group in range(meta.num_row_groups):
        count = meta.row_group(group).num_rows
        if unit.start < first + count:
            return [group], unit.start - first, unit.stop - unit.start
        first += count
    return [], 0, 0


def _rows(batches: Iterator[pa.RecordBatch], skip: int, take: int | None) -> Iterator[pa.RecordBatch]:
    """``batches`` less their first ``skip`` rows, up to ``take`` rows; stops reading once they are taken."""
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch, skip = batch.slice(skip), 0
        if take is not None:
            batch, take = batch.slice(0, take), take - min(take, batch.num_rows)
        yield batch
        if take == 0:
            return


def _capped(batch: pa.RecordBatch, limit: int) -> tuple[pa.RecordBatch, list[str | None]]:
    """A batch whose string and binary cells past ``limit`` bytes are null, and each row's reason (or
    None): such a row is kept and rejected, as a JSONL line past ``--max-line-bytes`` would be."""
    reasons: list[str | None] = [None] * batch.num_rows
    columns = list(batch.columns)
    for index, column in enumerate(columns):
        if not any(is_kind(column.type) for is_kind in _BYTES_TYPES):
            continue
        lengths = pc.binary_length(column)
        over = pc.greater(lengths, limit)
        if not pc.any(over).as_py():
            continue
        name = batch.schema.field(index).name
        flags = over.to_pylist()
        for row in (row for row, flag in enumerate(flags) if flag):
            reasons[row] = reasons[row] or (
                f"column {name!r} holds {lengths[row].as_py():,} bytes, more than --max-line-bytes ({limit:,})"
            )
        # take, not if_else: if_else sizes its result's data as its input's, the long cells included
        columns[index] = column.take(pa.array([None if flag else row for row, flag in enumerate(flags)], pa.int64()))
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema), reasons


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
