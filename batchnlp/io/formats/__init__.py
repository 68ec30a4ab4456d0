"""File formats: one module per format declares its :class:`~batchnlp.io.formats.base.Format`
(planning a file, reading a unit, writing a part, reading a part back), and this registry is the
one place that lists them. The spec's and the CLI's allowed formats and compressions, and input
detection by file name, all come from it: adding a format is one module and one line in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import pyarrow as pa

from batchnlp.errors import InputError
from batchnlp.io.formats import arrow, hive, jsonl, parquet
from batchnlp.io.formats.base import BadLine, Format, ReadOptions, ReadResult, WorkUnit, conform, unify
from batchnlp.io.formats.hive import Partitioning
from batchnlp.io.storage import GLOB_CHARS, InputFile, Location, storage_errors
from batchnlp.util.compat import strip_protocol

FORMATS: dict[str, Format] = {f.name: f for f in (parquet.FORMAT, jsonl.FORMAT, arrow.FORMAT)}
INPUT_FORMATS = tuple(name for name, f in FORMATS.items() if f.read is not None)
OUTPUT_FORMATS = tuple(name for name, f in FORMATS.items() if f.write is not None)
COMPRESSIONS = {name: FORMATS[name].compressions for name in OUTPUT_FORMATS}
DEFAULT_COMPRESSION = {name: compressions[0] for name, compressions in COMPRESSIONS.items()}

# Every worker gets the same number of units, so none idles at the end of a small job (three
# 500-row units on two workers left one idle for a third of the run). Units under ~250 rows
# cost throughput on CPU: too few rows of each length to batch without padding.
MIN_AUTO_ROWS, MAX_AUTO_ROWS, UNITS_PER_WORKER = 250, 10_000, 4

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "FORMATS",
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "BadLine",
    "Format",
    "Partitioning",
    "ReadOptions",
    "ReadResult",
    "UnitPlan",
    "WorkUnit",
    "detect_format",
    "plan_units",
    "read_unit",
    "unify",
]


@dataclass(frozen=True)
class UnitPlan:
    """The units of a job and, where the format declares one, the schema every part will have.

    ``schema`` includes the Hive partition columns of ``partitioning`` (None: the input has none).
    """

    units: list[WorkUnit]
    schema: pa.Schema | None
    rows_per_unit: int
    partitioning: Partitioning | None = None


def detect_format(files: list[InputFile], forced: str | None) -> str:
    """The one format of all input files, from ``--input-format`` or the file names."""
    if forced:
        return forced
    found: dict[str, str] = {}
    for file in files:
        kind = _format_of(file.path.lower())
        if kind is None:
            names = "|".join(INPUT_FORMATS)
            raise InputError(f"cannot tell the format of {file.path} from its name; pass --input-format {names}")
        found.setdefault(kind, file.path)
    if len(found) > 1:
        raise InputError(
            "input mixes formats ("
            + ", ".join(f"{kind}: {path}" for kind, path in found.items())
            + "); point the job at one format or pass --input-format"
        )
    return next(iter(found))


def _format_of(name: str) -> str | None:
    """The input format a file name says, its compression suffix (if the format reads one) aside."""
    for fmt in (FORMATS[kind] for kind in INPUT_FORMATS):
        bare = next((name.removesuffix(c) for c in fmt.input_compressions if name.endswith(c)), name)
        if bare.endswith(fmt.input_suffixes):
            return fmt.name
    return None


def plan_units(
    location: Location,
    files: list[InputFile],
    fmt: str,
    rows_per_unit: int | None,
    options: ReadOptions,
    workers: int,
    hive_paths: bool = True,
    partition_values: Mapping[str, dict[str, str | None]] | None = None,
) -> UnitPlan:
    """Cut every file into units, numbered in listing order: same input and settings, same units.

    Without an explicit ``rows_per_unit``, units are sized so every worker gets several of
    them (a small file still uses the whole cluster), within sensible bounds. Partition
    columns come from ``options.partitioning`` when given (a Delta table's log, with each file's
    values in ``partition_values``, fsspec path → key → value, carried by its units), else from
    ``key=value`` directories when ``hive_paths`` (a table's files are named by its metadata).
    """
    fs = location.fs
    layouts = []
    for file in files:
        with storage_errors("read", fs.unstrip_protocol(file.path), InputError, what="input"):
            layouts.append(FORMATS[fmt].describe(fs, file, options))
    if rows_per_unit is None:
        rows_per_unit = auto_rows_per_unit(sum(layout.rows for layout in layouts), workers)
    units: list[WorkUnit] = []
    for file, layout in zip(files, layouts, strict=True):
        for unit_format, start, stop, rows in layout.cut(rows_per_unit):
            values = partition_values.get(file.path) if partition_values else None
            url = fs.unstrip_protocol(file.path)
            unit = WorkUnit(
                index=len(units), path=url, format=unit_format, start=start, stop=stop, rows=rows, partition=values
            )
            units.append(unit)
    schemas = [(fs.unstrip_protocol(f.path), layout.schema) for f, layout in zip(files, layouts, strict=True)]
    known = all(schema is not None for _, schema in schemas)
    partitioning = options.partitioning
    if partitioning is None and hive_paths:
        partitioning = hive.discover(input_root(location.path, files), [f.path for f in files])
    schema = unify(schemas) if known and schemas else None
    if schema is not None and partitioning is not None:
        for where, file_schema in schemas:
            partitioning.check(file_schema, where)
        schema = partitioning.extend(schema)
    return UnitPlan(units, schema, rows_per_unit, partitioning)


def input_root(path: str, files: list[InputFile]) -> str | None:
    """The directory Hive partitions are found below: a directory/prefix input itself, a glob's
    directory before its first wildcard; a single file has none."""
    wildcard = GLOB_CHARS.search(path)
    if wildcard:
        return path[: wildcard.start()].rsplit("/", 1)[0] or None
    if len(files) == 1 and files[0].path.rstrip("/") == path.rstrip("/"):
        return None
    return path.rstrip("/")


def auto_rows_per_unit(total_rows: int, workers: int) -> int:
    """Four units per worker, or fewer (at least one) where they would fall under MIN_AUTO_ROWS; at most 10,000 rows."""
    workers = max(1, workers)
    per_worker = next((k for k in range(UNITS_PER_WORKER, 1, -1) if total_rows >= k * workers * MIN_AUTO_ROWS), 1)
    return max(1, min(MAX_AUTO_ROWS, -(-total_rows // (per_worker * workers))))


def read_unit(location: Location, unit: WorkUnit, options: ReadOptions, schema: pa.Schema | None = None) -> ReadResult:
    """Read one unit; with ``schema``, its columns are conformed to the job's one schema.

    With ``options.partitioning``, the file's Hive partition values are added as columns.
    """
    fs = location.fs
    fmt = FORMATS[unit.format.split("-")[0]]  # "jsonl-lines", "parquet-rows": a variant of the format's units
    path = strip_protocol(fs, unit.path)
    with storage_errors("read", unit.path, InputError, what="input"):
        result = fmt.read(fs, replace(unit, path=path), options)
    if options.partitioning is not None:
        result.table = options.partitioning.append(result.table, path, unit.describe(), unit.partition)
    if schema is not None:
        result.table = conform(result.table, schema, unit.describe())
    return result


def unit_schema(location: Location, unit: WorkUnit, options: ReadOptions) -> pa.Schema:
    """The schema one unit infers on its own (a Dask task: JSONL schemas need the data).

    Without partition columns: the driver appends those (:meth:`Partitioning.extend`).
    """
    return read_unit(location, unit, replace(options, partitioning=None)).table.schema
