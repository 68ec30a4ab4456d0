"""One job from start to commit: plan → check → submit → collect → commit.

Everything that can be checked without the cluster (input, text column, models, output) is
checked first, so a user error never waits for workers to start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from batchnlp import __version__
from batchnlp.cluster import connect, local_layout
from batchnlp.collect import StallWatch, results
from batchnlp.commit import Committer, PartResult, redacted_unit, totals
from batchnlp.errors import BatchnlpError, InputError, JobFailed, OutputError, TooManyBadLines
from batchnlp.formats import Partitioning, ReadOptions, WorkUnit, detect_format, plan_units, unify, unit_schema
from batchnlp.lock import OutputLock, owner_from
from batchnlp.models import check_ref
from batchnlp.redaction import redact_url
from batchnlp.report import build_report
from batchnlp.shutdown import GracefulStop
from batchnlp.spec import TABLE_FORMATS, JobSpec
from batchnlp.storage import InputFile, Location, check_output, list_input
from batchnlp.tables import Commit, TableSink, decode_schema, open_sink, read_table
from batchnlp.tasks.columns import ERROR_COLUMN, output_schema

logger = logging.getLogger(__name__)

# Units are sized before connecting; on an external cluster without --workers, assume this many.
EXTERNAL_WORKERS_GUESS = 8


@dataclass
class RunSummary:
    """What the CLI prints at the end; the manifest has the full story."""

    output: str
    run_id: str
    totals: dict[str, Any]
    wall_seconds: float
    units_run: int
    units_kept: int
    already_complete: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] | None = None  # Delta/Iceberg output: the table, its version, committed now or before

    @property
    def rows_per_second(self) -> float:
        return self.totals["rows_out"] / self.wall_seconds if self.wall_seconds else 0.0


@dataclass(frozen=True)
class Plan:
    source: Location
    files: list[InputFile]
    format: str
    units: list[WorkUnit]
    schema: pa.Schema | None  # None for JSONL until every unit's schema is known
    rows_per_unit: int
    partitioning: Partitioning | None = None  # Hive key=value directories below the input root, or a Delta log's
    table: dict[str, Any] | None = None  # Delta/Iceberg input: the table and the version/snapshot read

    @property
    def fingerprint(self) -> str:
        """Input listing and unit layout: a resumed run must cut the input exactly the same way."""
        listing = [[f.path, f.size, f.etag] for f in self.files]
        units = [[u.path, u.format, u.start, u.stop] for u in self.units]
        return hashlib.sha256(json.dumps([self.format, listing, units]).encode()).hexdigest()


def plan(spec: JobSpec, rows_per_unit: int | None = None) -> Plan:
    """Units for ``spec``; ``rows_per_unit`` (an interrupted run's) overrides automatic sizing."""
    options, table, values = spec.read_options, None, None
    if spec.input_format in TABLE_FORMATS:  # the table's data files at one version, all Parquet
        snapshot = read_table(spec)
        source, files, fmt, table = snapshot.location, snapshot.files, "parquet", snapshot.described
        options, values = replace(options, partitioning=snapshot.partitioning), snapshot.partition_values
    else:
        source = Location(spec.input, spec.storage_options)
        files = list_input(source)
        fmt = detect_format(files, spec.input_format)
    if spec.scheduler:
        workers = spec.workers or EXTERNAL_WORKERS_GUESS
    else:
        workers = local_layout(spec.workers, spec.device).workers
    rows = spec.rows_per_partition or rows_per_unit
    unit_plan = plan_units(source, files, fmt, rows, options, workers, table is None, values)
    units, schema, partitioning = unit_plan.units, unit_plan.schema, unit_plan.partitioning
    return Plan(source, files, fmt, units, schema, unit_plan.rows_per_unit, partitioning, table)


def run(
    spec: JobSpec,
    on_part: Callable[[PartResult], None] | None = None,
    on_start: Callable[..., None] | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary:
    """Run a job to commit; raises a :class:`BatchnlpError` saying what to fix on failure.

    ``on_start(run_id, units, kept, client=..., rows_per_unit=...)`` is called once the units to
    run are known (with the Dask client once connected, None when nothing is left to run);
    ``on_part(result)`` for each unit as it finishes (see :class:`batchnlp.progress.ProgressReporter`).
    ``stop``, installed by the caller, turns SIGTERM into a drain (:mod:`batchnlp.shutdown`).
    """
    started = time.perf_counter()
    sink = open_sink(spec) if spec.table_output else None
    run_id = _run_id(spec, sink)
    if sink is None:
        output = Location(spec.output, spec.storage_options)
        committer = Committer(output)
    else:  # a table run stages its files in a directory of its own, then commits them once
        output = sink.staging(run_id)
        committer = Committer(output, restart="give the job another --run-id to start a new run")
        version = sink.committed(run_id)
        if version is not None:  # a retried job: the table already holds this run
            return _already_committed(sink, committer, run_id, version)
        if committer.previous_job() is not None:  # an interrupted attempt of this run id: finish it
            spec = replace(spec, mode="resume")
    # Automatic unit sizing depends on the machine: a resumed run reuses the interrupted one's.
    previous = committer.previous_job() if spec.mode == "resume" else None
    job_plan = plan(spec, previous.get("rows_per_unit") if previous else None)
    if job_plan.schema is not None:  # Parquet: known now, before any worker starts
        _check_columns(spec, job_plan.schema, sink)
    model_versions = {task.name: check_ref(task.model, spec.storage_options) for task in spec.tasks}
    check_output(output)
    # A retried submission of a committed run has nothing to do.
    if sink is None and spec.mode != "overwrite" and committer.finished():
        manifest = committer.read_manifest()
        if _reruns(manifest, committer.previous_job(), spec, job_plan, model_versions):
            return RunSummary(
                output.display(), manifest["run_id"], manifest["totals"], 0.0, 0, len(job_plan.units), True, manifest
            )
    job_record = {
        "run_id": run_id,
        "spec_fingerprint": spec.fingerprint(),
        "input_fingerprint": job_plan.fingerprint,
        "model_versions": model_versions,
        "rows_per_unit": job_plan.rows_per_unit,
        "units": len(job_plan.units),  # for `batchnlp inspect` of an interrupted run
        "batchnlp_version": __version__,
        "spec": spec.redacted(),
    }
    owner = owner_from(os.environ, spec.lock_owner)
    with OutputLock(output, run_id, spec.break_lock, owner=owner, fingerprint=job_record["spec_fingerprint"]):
        if sink is not None and committer.finished():  # files sealed, but the commit died with its driver
            manifest = committer.read_manifest()
            kept = len(job_plan.units)
            summary = RunSummary(output.display(), run_id, manifest["totals"], 0.0, 0, kept, False, manifest)
        else:
            summary = _run_locked(spec, job_plan, committer, job_record, started, on_part, on_start, sink, stop)
        if sink is not None:
            schema = decode_schema(summary.manifest["schema"]["arrow"])
            summary.table = sink.publish(run_id, output, summary.manifest, schema, spec.partition_by).describe()
            summary.wall_seconds = time.perf_counter() - started
        return summary


def _reruns(
    manifest: dict[str, Any],
    committed_job: dict[str, Any] | None,
    spec: JobSpec,
    job_plan: Plan,
    model_versions: dict[str, Any],
) -> bool:
    """This run is the committed one again: asked to resume, named by its run id, or (no id given) the
    same spec over the same input files with the same models, such as a scheduler's retry of a job whose
    process died after its commit. Units are not compared: their automatic size depends on the machine."""
    if spec.mode == "resume" or spec.run_id:
        return spec.mode == "resume" or manifest["run_id"] == spec.run_id
    listing = [{"path": job_plan.source.display(f.path), "size": f.size, "etag": f.etag} for f in job_plan.files]
    return (
        committed_job is not None
        and committed_job.get("spec_fingerprint") == spec.fingerprint()
        and committed_job.get("model_versions") == model_versions
        and manifest.get("input", {}).get("files") == listing
    )


def _run_id(spec: JobSpec, sink: TableSink | None) -> str:
    """The run's id: given, an interrupted table run's (--resume without --run-id), or new."""
    if spec.run_id:
        return spec.run_id
    if sink is not None and spec.mode == "resume":
        pending = sink.pending_runs()
        if len(pending) > 1:
            raise OutputError(
                f"{sink.display()} has {len(pending)} interrupted runs ({', '.join(pending)}); "
                "pass --run-id ID with --resume to say which to finish"
            )
        if pending:
            return pending[0]
    if sink is not None:
        logger.warning(
            "no --run-id: this run appends to %s under a new id, and so would a retry of it; "
            "give scheduled jobs a run id (run_id: ${run_date} in a spec) so a retry commits once",
            sink.display(),
        )
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _already_committed(sink: TableSink, committer: Committer, run_id: str, version: int) -> RunSummary:
    """A run the table holds: nothing to do; figures from its sealed manifest when it is still there."""
    manifest = committer.read_manifest() if committer.finished() else {}
    summary = RunSummary(
        committer.output.display(), run_id, manifest.get("totals") or totals([]), 0.0, 0, 0, True, manifest
    )
    summary.table = Commit(sink.display(), version, False, sink.version_kind).describe()
    return summary


def _run_locked(
    spec: JobSpec,
    job_plan: Plan,
    committer: Committer,
    job_record: dict[str, Any],
    started: float,
    on_part: Callable[[PartResult], None] | None,
    on_start: Callable[..., None] | None = None,
    sink: TableSink | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary:
    """Everything that writes under OUTPUT: only ever run while holding its lock."""
    from batchnlp.worker import ModelPlugin, ModelSettings, UnitJob, guarded, run_unit

    output, run_id = committer.output, job_record["run_id"]
    kept = committer.prepare(spec.mode, job_record)
    todo = [unit for unit in job_plan.units if unit.id not in kept]
    logger.info(
        "planned %d units from %d %s files; %d to run, %d kept from an earlier attempt",
        len(job_plan.units),
        len(job_plan.files),
        job_plan.format,
        len(todo),
        len(kept),
        extra={
            "event": "planned",
            "run_id": run_id,
            "units": len(job_plan.units),
            "files": len(job_plan.files),
            "format": job_plan.format,
            "units_todo": len(todo),
            "units_kept": len(kept),
        },
    )
    done = dict(kept)

    def announce(client: Any) -> None:
        if on_start:
            on_start(run_id, job_plan.units, list(kept.values()), client=client, rows_per_unit=job_plan.rows_per_unit)

    if not todo:
        announce(None)
    if todo:
        with connect(spec.scheduler, spec.workers, spec.device) as (client, threads):
            announce(client)
            settings = ModelSettings(
                tasks=spec.tasks,
                device=spec.device,
                precision=spec.precision,
                tokens_per_batch=spec.tokens_per_batch,
                max_length=spec.max_length,
                threads=threads,
                storage_options=dict(spec.storage_options),
            )
            inferring = None
            if job_plan.schema is None:
                inferring = _infer_schema(client, job_plan.source, job_plan.units, spec.read_options)
            # Returns once every worker has its models; JSONL schemas are inferred meanwhile.
            client.register_plugin(ModelPlugin(settings), name=settings.plugin_name)
            schema = job_plan.schema
            if inferring is not None:  # JSONL: its columns are known only now, still before any unit runs
                schema = _unified_schema(client, inferring, job_plan.units, job_plan.partitioning)
                try:
                    _check_columns(spec, schema, sink)
                except BatchnlpError:
                    if not kept:  # nothing ran: leave no run behind for --resume to find
                        committer.clear()
                    raise
            job = UnitJob(
                job_plan.source,
                output,
                replace(spec.read_options, partitioning=job_plan.partitioning),
                spec.id_column,
                schema,
                settings.plugin_name,
                spec.output_options,
                spec.partition_by,
            )
            futures = {
                client.submit(guarded, run_unit, unit, job, key=f"batchnlp-{run_id}-{unit.id}", pure=False): unit
                for unit in todo
            }
            watch = StallWatch(client, spec.unit_timeout)
            bad_lines = sum(r.bad_lines for r in kept.values())
            with stop.draining() if stop is not None else nullcontext():
                for _, result in results(client, futures, stop, watch):
                    committer.record(result)
                    done[result.unit.id] = result
                    if on_part:
                        on_part(result)
                    bad_lines += result.bad_lines
                    if isinstance(spec.max_bad_lines, int) and bad_lines > spec.max_bad_lines:
                        _check_bad_lines(spec, list(done.values()), final=False)
    ordered = [done[unit.id] for unit in job_plan.units]
    _check_bad_lines(spec, ordered, final=True)
    wall = time.perf_counter() - started
    manifest = _manifest(spec, job_plan, ordered, job_record, wall)
    manifest["startup"] = _startup([r for r in ordered if r.unit.id not in kept])
    # The report goes first, so a committed run always has one; the manifest names its files.
    manifest["report"] = committer.write_report(build_report(manifest, ordered, time.time() - wall))
    committer.commit(manifest)
    return RunSummary(output.display(), run_id, manifest["totals"], wall, len(todo), len(kept), False, manifest)


def _schema_record(results: list[PartResult]) -> dict[str, Any] | None:
    """The output's columns, readable and exact (a table commit creates its table from it)."""
    encoded = next((r.schema for r in results if r.schema), None)
    if encoded is None:
        return None
    schema = decode_schema(encoded)
    return {"columns": {f.name: str(f.type) for f in schema}, "arrow": encoded}


def _startup(results: list[PartResult]) -> dict[str, float | None]:
    """Seconds from this process's start to the first worker with models, and to the first annotated row."""
    import psutil

    process_started = psutil.Process().create_time()
    loaded = [r.models_loaded_at for r in results if r.models_loaded_at]
    first = [r.first_output_at for r in results if r.first_output_at]
    return {
        "models_loaded_s": round(min(loaded) - process_started, 3) if loaded else None,
        "first_row_s": round(min(first) - process_started, 3) if first else None,
    }


def _infer_schema(client: Any, source: Location, units: list[WorkUnit], options: ReadOptions) -> dict[Any, WorkUnit]:
    """Every part gets one schema: each unit infers its own on the cluster (these futures)...

    All units take part, not only those left to run, so a resumed run finds the same schema.
    Reading JSONL twice costs far less than the model, and a malformed line stops the job
    before any inference.
    """
    from batchnlp.worker import guarded

    return {client.submit(guarded, unit_schema, source, unit, options, pure=False): unit for unit in units}


def _unified_schema(
    client: Any, futures: dict[Any, WorkUnit], units: list[WorkUnit], partitioning: Partitioning | None = None
) -> pa.Schema:
    """...and the driver unifies them, then appends the Hive partition columns."""
    schemas = {unit.id: schema for unit, schema in results(client, futures)}
    schema = unify([(unit.describe(), schemas[unit.id]) for unit in units])
    if partitioning is None:
        return schema
    for unit in units:
        partitioning.check(schemas[unit.id], unit.describe())
    return partitioning.extend(schema)


def _check_columns(spec: JobSpec, schema: pa.Schema, sink: TableSink | None = None) -> None:
    """The columns the spec names exist in the input, and the rows fit the output table: checked once,
    as soon as the input's schema is known, before any inference."""
    _check_question_columns(spec, schema)
    _check_partition_columns(spec, schema)
    _check_task_columns(spec, schema)
    if sink is not None:
        sink.check(output_schema(schema, spec.tasks), spec.partition_by)


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
    taken = [name for name in (*(task.name for task in spec.tasks), ERROR_COLUMN.name) if name in schema.names]
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


def _check_bad_lines(spec: JobSpec, finished: list[PartResult], final: bool) -> None:
    """Stop a run whose bad input lines exceed ``--max-bad-lines``: before the commit, or as soon as a
    count limit is passed (a fraction needs every line counted)."""
    limit = spec.max_bad_lines
    bad = sum(r.bad_lines for r in finished)
    if limit is None or not bad:
        return
    lines = bad + sum(r.rows_in for r in finished)
    if isinstance(limit, float):
        if not final or bad <= limit * lines:
            return
        allowed = f"{limit * 100:g}% of {lines} lines"
    elif bad <= limit:
        return
    else:
        allowed = str(limit)
    first = next(example for r in finished for example in r.bad_line_examples)
    raise TooManyBadLines(
        f"{bad} input lines were not JSON objects{'' if final else ' so far'}, more than --max-bad-lines allows "
        f"({allowed}); nothing was committed. First: {first['source']}:{first['line']} ({first['reason']}). Fix "
        "the input, or raise --max-bad-lines and rerun with --resume: the finished parts are kept"
    )


def _manifest(
    spec: JobSpec, job_plan: Plan, results: list[PartResult], job_record: dict[str, Any], wall: float
) -> dict[str, Any]:
    """The commit record: what ran, on what, with which models, and every part it wrote."""
    models = {}
    for task in spec.tasks:
        checksums = {json.dumps(r.models.get(task.name), sort_keys=True) for r in results}
        if len(checksums) > 1:
            raise JobFailed(f"model {task.model!r} changed during the run (workers saw different weights); run again")
        models[task.name] = {
            "task": task.kind,
            "ref": redact_url(task.model),
            "version": job_record["model_versions"][task.name],
            "weights": results[0].models.get(task.name) if results else None,
        }
    summary = totals(results)
    return {
        "batchnlp_version": __version__,
        "run_id": job_record["run_id"],
        "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": spec.redacted(),
        "input": {
            "format": job_plan.format,
            **({"table": job_plan.table} if job_plan.table else {}),
            "partitions": {f.name: str(f.type) for f in job_plan.partitioning.schema} if job_plan.partitioning else {},
            "files": [
                {"path": job_plan.source.display(f.path), "size": f.size, "etag": f.etag} for f in job_plan.files
            ],
        },
        "output": spec.output_options.describe(),
        "schema": _schema_record(results),
        "models": models,
        "device": sorted({r.device for r in results}),
        "precision": sorted({r.precision for r in results}),
        "parts": [
            {
                "path": r.part.rsplit("/", 1)[-1] or None,
                "source": redacted_unit(r.unit).describe(),
                "unit": redacted_unit(r.unit).__dict__,
                "rows": r.rows_out,
                "rejected": r.rejected,
                "bad_lines": r.bad_lines,
                "quarantine": r.quarantine,
                "tokens": r.tokens,
                "padded_tokens": r.padded_tokens,
                "bytes": r.bytes,
                "sha256": r.sha256,
                **({"files": r.files} if r.files else {}),
                "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
                "worker": r.worker,
                "models_loaded_at": r.models_loaded_at,
            }
            for r in results
        ],
        "totals": summary,
        "wall_seconds": round(wall, 3),
        "rows_per_second": round(summary["rows_out"] / wall, 2) if wall else None,
    }
