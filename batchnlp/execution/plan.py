"""Planning a job: the input listed and cut into units, and the spec's columns checked against it.

Everything here runs on the driver before any worker starts, so a misspelt column or a
partition key of the wrong type stops the job at once. Same input and settings, same units:
a resumed run cuts its input exactly as the interrupted one did (:attr:`Plan.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from batchnlp.cluster.local import local_layout
from batchnlp.errors import InputError
from batchnlp.execution.incremental import select, table_rewrites
from batchnlp.io.formats import Partitioning, WorkUnit, detect_format, plan_units
from batchnlp.io.storage import InputFile, Location, list_input
from batchnlp.io.tables import read_table
from batchnlp.ledger.record import Manifest
from batchnlp.spec import TABLE_FORMATS, JobSpec
from batchnlp.tasks import column_names
from batchnlp.tasks.columns import ERROR_COLUMN

# Units are sized before connecting; on an external cluster without --workers, assume this many.
EXTERNAL_WORKERS_GUESS = 8


@dataclass(frozen=True, kw_only=True)
class Plan:
    source: Location
    files: list[InputFile]
    format: str
    units: list[WorkUnit]
    schema: pa.Schema | None  # None for JSONL until every unit's schema is known
    rows_per_unit: int
    partitioning: Partitioning | None = None  # Hive key=value directories below the input root, or a Delta log's
    table: dict[str, Any] | None = None  # Delta/Iceberg input: the table and the version/snapshot read
    incremental: dict[str, Any] | None = None  # --incremental: what was new, replaced, gone (Selection.record)

    @property
    def fingerprint(self) -> str:
        """Input listing and unit layout: a resumed run must cut the input exactly the same way."""
        listing = [[f.path, f.size, f.etag] for f in self.files]
        units = [[u.path, u.format, u.start, u.stop] for u in self.units]
        return hashlib.sha256(json.dumps([self.format, listing, units]).encode()).hexdigest()

    @property
    def listing(self) -> list[dict[str, Any]]:
        """The input files as the manifest records them (and a rerun of a committed job compares them)."""
        return [{"path": self.source.display(f.path), "size": f.size, "etag": f.etag} for f in self.files]


def plan(
    spec: JobSpec, rows_per_unit: int | None = None, shards: int = 1, covered: list[Manifest] | None = None
) -> Plan:
    """Units for ``spec``; ``rows_per_unit`` (an interrupted run's) overrides automatic sizing.
    ``shards``: the machines that share the units (each with the workers this one has). ``covered``:
    with ``--incremental``, the committed runs whose input files are left out."""
    options, table, values = spec.read_options, None, None
    if spec.input_format in TABLE_FORMATS:  # the table's data files at one version, all Parquet
        snapshot = read_table(spec)
        source, files, fmt, table = snapshot.location, snapshot.files, "parquet", snapshot.described
        options, values = replace(options, partitioning=snapshot.partitioning), snapshot.partition_values
    else:
        source = Location(spec.input, spec.storage_options)
        if spec.incremental:  # a listing cached by an earlier run in this process would hide new files
            source.fs.invalidate_cache()
        files = list_input(source)
        fmt = detect_format(files, spec.input_format)
    selection = None
    if spec.incremental:
        rewrites = table_rewrites(spec, table, covered or []) if table else []
        selection = select(files, source.display, covered or [], rewrites)
        files = selection.files
        if not files:  # nothing new: no units, and nothing to read a schema from
            return Plan(
                source=source,
                files=[],
                format=fmt,
                units=[],
                schema=None,
                rows_per_unit=0,
                table=table,
                incremental=selection.record(),
            )
    if spec.scheduler:
        workers = spec.workers or EXTERNAL_WORKERS_GUESS
    else:
        workers = local_layout(spec.workers, spec.device).workers
    rows = spec.rows_per_partition or rows_per_unit
    unit_plan = plan_units(source, files, fmt, rows, options, workers * shards, table is None, values)
    units, schema, partitioning = unit_plan.units, unit_plan.schema, unit_plan.partitioning
    incremental = selection.record() if selection else None
    return Plan(
        source=source,
        files=files,
        format=fmt,
        units=units,
        schema=schema,
        rows_per_unit=unit_plan.rows_per_unit,
        partitioning=partitioning,
        table=table,
        incremental=incremental,
    )


def check_columns(spec: JobSpec, schema: pa.Schema) -> None:
    """The columns the spec names exist in the input: checked once, as soon as the input's schema is
    known, before any inference."""
    _check_question_columns(spec, schema)
    _check_partition_columns(spec, schema)
    _check_task_columns(spec, schema)


def _check_question_columns(spec: JobSpec, schema: pa.Schema) -> None:
    """A misspelt --question-column stops the job before inference, not after rejecting every row."""
    for task in spec.tasks:
        if task.question_column and task.question_column not in schema.names:
            raise InputError(
                f"task {task.name!r} reads questions from column {task.question_column!r}, which the input "
                f"does not have; columns found: {', '.join(schema.names)}. Pass --question-column NAME"
            )


def _check_task_columns(spec: JobSpec, schema: pa.Schema) -> None:
    """The columns a run adds (one per task, ``_error``) are not in the input already: a part with two
    columns of one name is unreadable. The usual cause is an earlier run's output fed back in."""
    written = [name for task in spec.tasks for name in column_names(task)]  # ner --redact: two
    taken = [name for name in (*written, ERROR_COLUMN.name) if name in schema.names]
    if not taken:
        return
    fixes = []
    if ERROR_COLUMN.name in taken:
        fixes.append("drop or rename the input's _error column (every run writes its own)")
    if set(taken) - {ERROR_COLUMN.name}:
        fixes.append("give the task another name in a job spec (tasks: [{name: sentiment_v2, task: sentiment}])")
    raise InputError(
        f"the input already has {'a column' if len(taken) == 1 else 'columns'} {', '.join(map(repr, taken))}, "
        f"which this run writes itself (is the input an earlier run's output?); {' and '.join(fixes)}"
    )


def _check_partition_columns(spec: JobSpec, schema: pa.Schema) -> None:
    """--partition-by names input columns (or the input's own partition keys) of a flat type."""
    missing = [name for name in spec.partition_by if name not in schema.names]
    if missing:
        raise InputError(
            f"--partition-by names {'a column' if len(missing) == 1 else 'columns'} the input does not have: "
            f"{', '.join(missing)}; columns found (partition keys of the input included): {', '.join(schema.names)}"
        )
    nested = [name for name in spec.partition_by if pa.types.is_nested(schema.field(name).type)]
    if nested:
        raise InputError(
            f"--partition-by cannot use {', '.join(nested)}: a partition value must be a single value "
            "(string, number, date, ...), not a list or struct"
        )
