"""One job from start to commit: plan → submit → collect → commit.

Everything that can be checked without the cluster (input, columns, models, output) is checked
first, so a user error never waits for workers to start. Where the rows go (part files, a Delta
or Iceberg table) is the :class:`~batchnlp.ledger.output.Output`'s business: the runner holds one and
never asks which.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from batchnlp.cluster.local import connect, run_forked, worker_imports_started
from batchnlp.errors import BatchnlpError, JobFailed, TooManyBadLines
from batchnlp.execution import distinct
from batchnlp.execution.cascade import student_entry, student_versions
from batchnlp.execution.collect import StallWatch, results
from batchnlp.execution.columns import typed_output_schema
from batchnlp.execution.context import RunContext
from batchnlp.execution.label_lookup import add_to_cache, cache_record, open_lookup
from batchnlp.execution.plan import Plan, check_columns, plan
from batchnlp.execution.shards.plan import Shard
from batchnlp.execution.shutdown import GracefulStop
from batchnlp.execution.worker import ModelPlugin, ModelSettings, UnitJob, guarded, run_unit
from batchnlp.inference.models.stage import check_ref
from batchnlp.io.formats import Partitioning, ReadOptions, WorkUnit, unify, unit_schema
from batchnlp.io.storage import Location, check_output
from batchnlp.io.tables.base import Commit
from batchnlp.io.worker_credentials import hands_credentials_to_local_workers, public_options
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.lock import OutputLock, owner_from
from batchnlp.ledger.output import Output, open_output
from batchnlp.ledger.record import JobRecord, Manifest, PartResult, Sharding, Totals, decode_schema
from batchnlp.ledger.report import build_report
from batchnlp.spec import JobSpec
from batchnlp.tasks.columns import embedding_settings
from batchnlp.util.redaction import redact_url
from batchnlp.version import __version__

logger = logging.getLogger(__name__)

ESTIMATE_WAIT_SECONDS = 30.0  # how long a finished run waits for its estimate (Estimating)


@dataclass(kw_only=True)
class RunSummary:
    """What the CLI prints at the end; the manifest has the full story."""

    output: str
    run_id: str
    totals: Totals
    wall_seconds: float
    units_run: int
    units_kept: int
    already_complete: bool = False
    manifest: Manifest | None = None  # None: a table holds the run, its staging manifest is gone
    table: Commit | None = None  # Delta/Iceberg output: the table, its version, committed now or before
    shard: Shard | None = None  # one shard of a sharded run: its parts written, nothing committed
    nothing_new: bool = False  # --incremental: every input file was labelled by a committed run already

    @property
    def rows_per_second(self) -> float:
        return self.totals.rows_out / self.wall_seconds if self.wall_seconds else 0.0

    @classmethod
    def complete_before(
        cls,
        *,
        output: str,
        run_id: str,
        manifest: Manifest | None,
        units_kept: int = 0,
        table: Commit | None = None,
        shard: Shard | None = None,
    ) -> RunSummary:
        """A run committed by an earlier attempt: nothing ran now. Its figures are its sealed
        manifest's; none when a table holds the run and its staging manifest is gone."""
        totals = manifest.totals if manifest is not None else Totals()
        return cls(
            output=output,
            run_id=run_id,
            totals=totals,
            wall_seconds=0.0,
            units_run=0,
            units_kept=units_kept,
            already_complete=True,
            manifest=manifest,
            table=table,
            shard=shard,
        )

    @classmethod
    def with_nothing_new(cls, *, output: str, run_id: str, wall_seconds: float) -> RunSummary:
        """An ``--incremental`` run whose every input file a committed run labelled: nothing ran or committed."""
        return cls(
            output=output,
            run_id=run_id,
            totals=Totals(),
            wall_seconds=wall_seconds,
            units_run=0,
            units_kept=0,
            already_complete=True,
            nothing_new=True,
        )


@hands_credentials_to_local_workers
def run(
    spec: JobSpec,
    on_part: Callable[[PartResult], None] | None = None,
    on_start: Callable[..., None] | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary:
    """Run a job to commit; raises a :class:`BatchnlpError` saying what to fix on failure.

    ``on_start(run_id, units, kept, client=..., rows_per_unit=...)`` is called once the units to
    run are known (with the Dask client once connected, None when nothing is left to run);
    ``on_part(result)`` for each unit as it finishes (see :class:`batchnlp.observe.progress.ProgressReporter`).
    ``stop``, installed by the caller, turns SIGTERM into a drain (:mod:`batchnlp.execution.shutdown`).
    """
    started = time.perf_counter()
    output = open_output(spec).prepare()
    done = output.committed()
    if done is not None:  # a retried table job: the table already holds this run
        return already_committed(output, done)
    committer = Committer(output.location, restart=output.restart)
    spec = replace(spec, mode=output.mode(committer))
    # Automatic unit sizing depends on the machine: a resumed run reuses the interrupted one's.
    previous = committer.previous_job() if spec.mode == "resume" else None
    covered = output.covered_runs() if spec.incremental else None
    job_plan = plan(spec, previous.rows_per_unit if previous else None, covered=covered)
    if spec.incremental and not job_plan.units:  # nothing new: no run to commit (an empty input commits)
        return _nothing_new(spec, output, job_plan, time.perf_counter() - started)
    estimating = Estimating(spec, job_plan)  # while the workers start
    if job_plan.schema is not None:  # Parquet: known now, before any worker starts
        check_schema(spec, job_plan.schema, output)
    models = {task.name: check_ref(task.model, spec.storage_options) for task in spec.tasks}
    models.update(student_versions(spec))
    job = job_record(spec, output.run_id, job_plan, models)
    check_output(output.location)
    repeated = output.completed(committer, job, job_plan.listing)
    if repeated is not None:  # a retried submission of a committed run has nothing to do
        add_to_cache(spec, repeated)  # unless its first attempt died between its commit and the cache's
        return RunSummary.complete_before(
            output=output.location.display(),
            run_id=repeated.run_id,
            manifest=repeated,
            units_kept=len(job_plan.units),
        )
    context = RunContext(
        spec=spec,
        plan=job_plan,
        output=output,
        committer=committer,
        job=job,
        on_part=on_part,
        on_start=on_start,
        stop=stop,
        lookup=open_lookup(spec, output.run_id),
    )
    owner = owner_from(os.environ, spec.lock_owner)
    lock = OutputLock(output.location, output.run_id, spec.break_lock, owner=owner, fingerprint=spec.fingerprint())
    with lock:
        manifest, units_run = output.sealed(committer), 0
        if manifest is None:
            manifest, units_run = _run_locked(context, started, estimating)
        lock.check_held()
        table = output.commit(committer, manifest)
        add_to_cache(spec, manifest)
        return RunSummary(
            output=output.location.display(),
            run_id=output.run_id,
            totals=manifest.totals,
            wall_seconds=time.perf_counter() - started,
            units_run=units_run,
            units_kept=len(job_plan.units) - units_run,
            manifest=manifest,
            table=table,
        )


def job_record(
    spec: JobSpec, run_id: str, job_plan: Plan, models: dict[str, str], sharding: Sharding | None = None
) -> JobRecord:
    """The job record of a run of ``spec`` over ``job_plan``'s units with the model versions ``models``."""
    return JobRecord(
        run_id=run_id,
        spec_fingerprint=spec.fingerprint(),
        input_fingerprint=job_plan.fingerprint,
        model_versions=models,
        rows_per_unit=job_plan.rows_per_unit,
        units=len(job_plan.units),
        batchnlp_version=__version__,
        spec=spec.redacted(),
        sharding=sharding,
    )


def _nothing_new(spec: JobSpec, output: Output, job_plan: Plan, wall: float) -> RunSummary:
    """An incremental run whose input every committed run already covers: nothing runs, nothing commits."""
    runs = (job_plan.incremental or {}).get("covered_by", [])
    logger.info(
        "nothing new to label: every input file was labelled by run %s",
        ", ".join(runs[-3:]) or "?",
        extra={"event": "nothing_new", "run_id": output.run_id, "covered_by": runs},
    )
    where = Location(spec.output, spec.storage_options).display()  # OUTPUT, not this run's own directory
    return RunSummary.with_nothing_new(output=where, run_id=output.run_id, wall_seconds=wall)


class Estimating:
    """The plan's estimate (:func:`batchnlp.execution.estimate.estimate_from_plan`: rows, tokens, padding, time),
    worked out on a daemon thread while the run goes on. It only informs the report: a failure
    warns, and a run never waits for it more than :data:`ESTIMATE_WAIT_SECONDS` after its last unit.

    It starts at once. Where the CPU workers are forked from a process importing their libraries
    (:mod:`batchnlp.cluster.local`), the estimate is forked from it too, once those imports are done:
    run here, it imported torch and transformers a second time, ~3 s of CPU that on 2 cores
    delayed the workers' start (first row of a 1,200-row job: 5.2-6.1 s, 4.4-4.8 s without it);
    forked, it costs ~0.5 s. Started after the first row instead, it took its seconds from the
    labelling workers (units beside it ran 35% slower). A lower thread priority was tried once and
    made the run 10 s slower: starved while holding the GIL, the thread held up the driver's event
    loop."""

    def __init__(self, spec: JobSpec, job_plan: Plan) -> None:
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(spec, job_plan), name="batchnlp-estimate", daemon=True)
        self._thread.start()

    def _work(self, spec: JobSpec, job_plan: Plan) -> None:
        try:
            self._result = (
                run_forked(_estimate, spec, job_plan) if worker_imports_started() else _estimate(spec, job_plan)
            )
        except Exception as e:  # reported by result(): an estimate must never fail a run
            self._error = e

    def result(self) -> dict[str, Any] | None:
        self._thread.join(ESTIMATE_WAIT_SECONDS)
        if self._thread.is_alive():
            logger.warning("no estimate for the report: still estimating %.0f s after the run", ESTIMATE_WAIT_SECONDS)
        elif self._error is not None:
            logger.warning("no estimate for the report: %s: %s", type(self._error).__name__, self._error)
        return self._result


def _estimate(spec: JobSpec, job_plan: Plan) -> dict[str, Any]:
    from batchnlp.execution.estimate import estimate_from_plan

    return estimate_from_plan(spec, job_plan)


def already_committed(output: Output, table: Commit) -> RunSummary:
    """A run the table holds: nothing to do; figures from its sealed manifest when it is still there."""
    committer = Committer(output.location)
    manifest = committer.read_manifest() if committer.finished() else None
    return RunSummary.complete_before(
        output=output.location.display(), run_id=output.run_id, manifest=manifest, table=table
    )


def _run_locked(context: RunContext, started: float, estimating: Estimating) -> tuple[Manifest, int]:
    """Submit and collect every unit left to run, then build the manifest and the report (nothing
    committed yet); only ever run while holding OUTPUT's lock. Returns the manifest and the units run."""
    spec, job_plan = context.spec, context.plan
    kept = context.committer.prepare(spec.mode, context.job)
    todo = [unit for unit in job_plan.units if unit.id not in kept]
    log_planned(context, todo, kept)
    if todo:
        with connect(spec) as (client, threads):
            done = run_units(context.connected(client, threads), todo, kept)
    else:
        done = run_units(context, todo, kept)
    ordered = [done[unit.id] for unit in job_plan.units]
    check_bad_lines(spec, ordered, final=True)
    wall = time.perf_counter() - started
    manifest = finish(context, ordered, wall=wall, kept=kept, estimate=estimating.result())
    return manifest, len(todo)


def log_planned(
    context: RunContext, todo: list[WorkUnit], kept: dict[str, PartResult], shard: Shard | None = None
) -> None:
    run_id, job_plan = context.run_id, context.plan
    share = f"; shard {shard} runs {len(todo) + len(kept)} of them" if shard else ""
    logger.info(
        "planned %d units from %d %s files%s; %d to run, %d kept from an earlier attempt",
        len(job_plan.units),
        len(job_plan.files),
        job_plan.format,
        share,
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
            **({"shard": str(shard)} if shard else {}),
        },
    )


def run_units(
    context: RunContext, todo: list[WorkUnit], kept: dict[str, PartResult], units: list[WorkUnit] | None = None
) -> dict[str, PartResult]:
    """Run ``todo`` on the context's cluster, recording each finished unit; returns every result by unit
    id, ``kept`` ones included. ``units``: what this process runs of the plan (a shard's share; all)."""
    spec, client, stop, run_id = context.spec, context.client, context.stop, context.run_id
    done = dict(kept)
    if context.on_start:
        rows, planned = context.plan.rows_per_unit, units or context.plan.units
        context.on_start(run_id, planned, list(kept.values()), client=client if todo else None, rows_per_unit=rows)
    if not todo:
        return done
    with _submitted_job(context, resumed=bool(kept)) as job:
        feeding = None
        if spec.dedup:  # each distinct input labelled once, across units and workers
            workers = sum(client.nthreads().values())
            futures, feeding = distinct.submit(client, todo, job, run_id, workers, context.lookup)
        else:
            futures = {
                client.submit(guarded, run_unit, unit, job, key=f"batchnlp-{run_id}-{unit.id}", pure=False): unit
                for unit in todo
            }
        watch = StallWatch(client, spec.unit_timeout)
        bad_lines = sum(r.bad_lines for r in kept.values())
        with stop.draining() if stop is not None else nullcontext():
            for _, result in results(client, futures, stop, watch, feeding):
                context.committer.record(result)
                done[result.unit.id] = result
                if context.on_part:
                    context.on_part(result)
                bad_lines += result.bad_lines
                if isinstance(spec.max_bad_lines, int) and bad_lines > spec.max_bad_lines:
                    check_bad_lines(spec, list(done.values()), final=False)
    return done


def finish(
    context: RunContext,
    ordered: list[PartResult],
    *,
    wall: float,
    kept: dict[str, PartResult],
    estimate: dict[str, Any] | None,
    since: float | None = None,
) -> Manifest:
    """The manifest and the report of a run whose every unit is done (nothing committed yet).

    ``wall``: the run's seconds so far. ``kept``: the units an earlier attempt ran (not counted in
    the start-up figures). ``estimate``: the plan's, for the report to set beside what happened.
    ``since``: when the run began, for its start-up figures (default: this process's start)."""
    manifest = _manifest(context, ordered, wall)
    manifest.estimate = estimate
    manifest.startup = _startup([r for r in ordered if r.unit.id not in kept], since)
    # The report goes first, so a committed run always has one; the manifest names its files.
    manifest.report = context.committer.write_report(build_report(manifest, ordered, time.time() - wall))
    return manifest


@contextmanager
def _submitted_job(context: RunContext, resumed: bool) -> Iterator[UnitJob]:
    """Load the models on every worker and fix the parts' schema: what each unit needs besides its range.

    The models' plugin is this block's alone (its name ends in a token of its own) and is
    unregistered as the block ends, so nothing of the job stays on a shared cluster. It carries
    no credential: workers take those from their environment (:mod:`batchnlp.io.worker_credentials`).
    """
    spec, job_plan, client = context.spec, context.plan, context.client
    settings = ModelSettings(
        tasks=spec.tasks,
        device=spec.device,
        precision=spec.precision,
        tokens_per_batch=spec.tokens_per_batch,
        max_length=spec.max_length,
        threads=context.threads,
        storage_options=public_options(spec.storage_options),
        rescore_margin=spec.rescore_margin,
        backend=spec.backend,
    )
    name = f"{settings.plugin_name}-{uuid.uuid4().hex[:8]}"
    inferring = None
    if job_plan.schema is None:
        inferring = infer_schema(client, job_plan.source, job_plan.units, spec.read_options)
    # Returns once every worker has its models; JSONL schemas are inferred meanwhile.
    client.register_plugin(ModelPlugin(settings), name=name)
    try:
        schema = job_plan.schema
        if inferring is not None:  # JSONL: its columns are known only now, still before any unit runs
            schema = unified_schema(client, inferring, job_plan.units, job_plan.partitioning)
            try:
                check_schema(spec, schema, context.output)
            except BatchnlpError:
                if not resumed:  # nothing ran: leave no run behind for --resume to find
                    context.committer.clear()
                raise
        read = replace(spec.read_options, partitioning=job_plan.partitioning)
        yield UnitJob(
            input=job_plan.source,
            read=read,
            id_column=spec.id_column,
            schema=schema,
            plugin_name=name,
            output=context.output,
        )
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception as e:  # a cluster going down with the job: its outcome matters more
            logger.warning("could not unregister the models' worker plugin %s: %s", name, e)


def check_schema(spec: JobSpec, schema: pa.Schema, output: Output) -> None:
    """The input has the columns the spec names, and the rows the tasks add to it fit the output."""
    check_columns(spec, schema)
    output.check(typed_output_schema(spec, schema))


def _schema_record(results: list[PartResult]) -> dict[str, Any] | None:
    """The output's columns, readable and exact (a table commit creates its table from it); an embedding
    column's dimension, pooling and normalisation under ``embeddings``."""
    encoded = next((r.schema for r in results if r.schema), None)
    if encoded is None:
        return None
    schema = decode_schema(encoded)
    record: dict[str, Any] = {"columns": {f.name: str(f.type) for f in schema}, "arrow": encoded}
    embeddings = {f.name: described for f in schema if (described := embedding_settings(f.type))}
    if embeddings:
        record["embeddings"] = embeddings
    return record


def _startup(results: list[PartResult], since: float | None = None) -> dict[str, float | None]:
    """Seconds from ``since`` (wall clock; default this process's start) to the first worker with
    models, and to the first annotated row; and the longest any worker spent exporting models to
    ONNX as it loaded them (0 when every export was cached)."""
    import psutil

    started = psutil.Process().create_time() if since is None else since
    loaded = [r.models_loaded_at for r in results if r.models_loaded_at]
    first = [r.first_output_at for r in results if r.first_output_at]
    return {
        "models_loaded_s": round(min(loaded) - started, 3) if loaded else None,
        "first_row_s": round(min(first) - started, 3) if first else None,
        "onnx_export_s": round(max((r.export_seconds for r in results), default=0.0), 3),
    }


def infer_schema(client: Any, source: Location, units: list[WorkUnit], options: ReadOptions) -> dict[Any, WorkUnit]:
    """Every part gets one schema: each unit infers its own on the cluster (these futures)...

    All units take part, not only those left to run, so a resumed run finds the same schema.
    Reading JSONL twice costs far less than the model, and a malformed line stops the job
    before any inference.
    """
    return {client.submit(guarded, unit_schema, source, unit, options, pure=False): unit for unit in units}


def unified_schema(
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


def check_bad_lines(spec: JobSpec, finished: list[PartResult], final: bool) -> None:
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


def _manifest(context: RunContext, results: list[PartResult], wall: float) -> Manifest:
    """The commit record: what ran, on what, with which models, and every part it wrote."""
    spec, job_plan = context.spec, context.plan
    models = {}
    for task in spec.tasks:
        checksums = {json.dumps(r.models.get(task.name), sort_keys=True) for r in results}
        if len(checksums) > 1:
            raise JobFailed(f"model {task.model!r} changed during the run (workers saw different weights); run again")
        models[task.name] = {
            "task": task.kind,
            "ref": redact_url(task.model),
            "version": context.job.model_versions[task.name],
            "weights": results[0].models.get(task.name) if results else None,
            "backends": sorted({r.backends[task.name] for r in results if task.name in r.backends}),
        }
        if task.student:  # a cascade
            models[task.name]["student"] = student_entry(task, results, context.job.model_versions)
    summary = sum(results, Totals())
    return Manifest(
        batchnlp_version=__version__,
        run_id=context.job.run_id,
        committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        spec=spec.redacted(),
        input={
            "format": job_plan.format,
            **({"table": job_plan.table} if job_plan.table else {}),
            **({"incremental": job_plan.incremental} if job_plan.incremental else {}),
            "partitions": {f.name: str(f.type) for f in job_plan.partitioning.schema} if job_plan.partitioning else {},
            "files": job_plan.listing,
        },
        output=spec.output_options.describe(),
        schema=_schema_record(results),
        models=models,
        device=sorted({r.device for r in results}),
        precision=sorted({r.precision for r in results}),
        parts=[r.manifest_entry() for r in results],
        totals=summary,
        wall_seconds=round(wall, 3),
        rows_per_second=round(summary.rows_out / wall, 2) if wall else None,
        label_cache=cache_record(context.lookup, results),
    )
