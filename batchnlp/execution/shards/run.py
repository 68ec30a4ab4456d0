"""Sharded runs: one shard's units of a run (``batchnlp run --shard I/N``), and the one commit of
them all (``batchnlp commit``), on top of the single run's steps in :mod:`batchnlp.execution.runner`.

Why shards, and how they share one plan: :mod:`batchnlp.execution.shards.plan`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from batchnlp.cluster.local import connect
from batchnlp.errors import InputError, JobFailed, OutputError, SpecError
from batchnlp.execution.cascade import student_versions
from batchnlp.execution.context import RunContext
from batchnlp.execution.label_lookup import add_to_cache, open_lookup
from batchnlp.execution.plan import plan
from batchnlp.execution.runner import (
    Estimating,
    RunSummary,
    already_committed,
    check_bad_lines,
    check_schema,
    finish,
    infer_schema,
    job_record,
    log_planned,
    run_units,
    unified_schema,
)
from batchnlp.execution.shards.plan import (
    PLAN,
    Shard,
    StoredPlan,
    changed_inputs,
    check_same_job,
    read_plan,
    shard_lock,
    shard_of,
    store_plan,
)
from batchnlp.execution.shutdown import GracefulStop
from batchnlp.inference.models.stage import check_ref
from batchnlp.io.storage import check_output
from batchnlp.io.worker_credentials import hands_credentials_to_local_workers
from batchnlp.ledger import ownership
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.label_cache import LabelCache
from batchnlp.ledger.lock import OutputLock, owner_from
from batchnlp.ledger.output import Output, open_output
from batchnlp.ledger.record import PartResult, Sharding, Totals
from batchnlp.spec import JobSpec


@hands_credentials_to_local_workers
def run_shard(
    spec: JobSpec,
    shard: Shard,
    on_part: Callable[[PartResult], None] | None = None,
    on_start: Callable[..., None] | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary:
    """Run one shard's units of the run's stored plan (planning and storing it if this shard is first);
    record each, commit nothing. A rerun of the shard keeps its intact parts. The callbacks are
    :func:`batchnlp.execution.runner.run`'s."""
    started = time.perf_counter()
    _check_shardable(spec)
    output = open_output(spec).prepare()
    done = output.committed()
    if done is not None:  # the table holds the run: committed already
        return already_committed(output, done)
    committer = Committer(output.location, restart=output.restart)
    display = output.location.display()
    if committer.finished():
        manifest = committer.read_manifest()
        if manifest.run_id == output.run_id:
            return RunSummary.complete_before(output=display, run_id=output.run_id, manifest=manifest, shard=shard)
        raise OutputError(
            f"{display} holds committed run {manifest.run_id}; the shards of run {output.run_id} need an output of "
            "their own: put ${run_date} in the spec's output, or use another OUTPUT"
        )
    models = {task.name: check_ref(task.model, spec.storage_options) for task in spec.tasks}
    models.update(student_versions(spec))
    check_output(output.location)
    owner = owner_from(os.environ, spec.lock_owner)
    lock = OutputLock(
        output.location,
        output.run_id,
        spec.break_lock,
        owner=owner,
        fingerprint=spec.fingerprint(),
        name=shard_lock(shard),
    )
    with lock, ExitStack() as cluster:
        ownership.refuse_foreign(output.location, ownership.take_stock(output.location))  # shards never clear
        client, threads = None, None
        stored = read_plan(committer, spec.storage_options, spec.input)
        if stored is None:
            client, threads = cluster.enter_context(connect(spec))
            stored = _store_new_plan(client, spec, output, committer, shard, models)
        check_same_job(
            stored, spec_fingerprint=spec.fingerprint(), model_versions=models, shards=shard.count, output=display
        )
        context = RunContext(
            spec=spec,
            plan=stored.plan,
            output=output,
            committer=committer,
            job=replace(stored.job, model_versions=models),  # the models as this shard found them
            on_part=on_part,
            on_start=on_start,
            stop=stop,
            client=client,
            threads=threads,
            lookup=open_lookup(spec, output.run_id, _cache_version(stored)),
        )
        units = shard.take(stored.plan.units)
        kept = committer.resumable(context.job, units)
        todo = [unit for unit in units if unit.id not in kept]
        changed = changed_inputs(stored, todo)
        if changed:
            raise InputError(
                f"input changed since run {output.run_id} was planned: {'; '.join(changed)}. Its shards must read "
                "the files its plan listed: restore them, or label the new input as a new run (another --run-id)"
            )
        log_planned(context, todo, kept, shard)
        if todo and context.client is None:
            context = context.connected(*cluster.enter_context(connect(spec)))
        done = run_units(context, todo, kept, units)
    return RunSummary(
        output=display,
        run_id=output.run_id,
        totals=sum((done[unit.id] for unit in units), Totals()),
        wall_seconds=time.perf_counter() - started,
        units_run=len(todo),
        units_kept=len(kept),
        shard=shard,
    )


def _check_shardable(spec: JobSpec) -> None:
    """Every shard, every retry and the commit must name the same run; and no shard may wipe the others'."""
    if not spec.run_id:
        raise SpecError(
            "a sharded run needs a run id that every shard and `batchnlp commit` share: pass --run-id ID "
            "(run_id: ${run_date} in a scheduled spec)"
        )
    if spec.mode == "overwrite":
        raise SpecError(
            "--overwrite does not apply to a shard: one shard would delete the others' parts; clear OUTPUT first"
        )


def _store_new_plan(
    client: Any, spec: JobSpec, output: Output, committer: Committer, shard: Shard, models: dict[str, Any]
) -> StoredPlan:
    """Plan the run, with the parts' schema (JSONL's inferred on the cluster), and store it for every
    shard; the plan another shard stored first wins. OUTPUT must hold no other run's unfinished work."""
    previous = committer.previous_job()
    if previous is not None:
        # A shard stores its plan before its job record: a record with a plan beside it is another
        # shard's, stored while this one started its cluster (array children start together).
        stored = read_plan(committer, spec.storage_options, spec.input)
        if stored is not None:
            return stored
        raise OutputError(
            f"{output.location.display()} holds the unfinished run {previous.run_id}, not planned as shards; "
            "finish it with batchnlp run --resume, or write the shards to another OUTPUT"
        )
    covered = output.covered_runs() if spec.incremental else None
    job_plan = plan(spec, shards=shard.count, covered=covered)  # units sized to keep every shard's workers busy
    if spec.incremental and not job_plan.units:  # an empty input is planned and committed as an empty run
        raise OutputError(
            f"nothing new to label for run {output.run_id}: every input file was labelled by a committed run; "
            "no shard needs to run"
        )
    schema = job_plan.schema
    if schema is None:
        schema = unified_schema(
            client,
            infer_schema(client, job_plan.source, job_plan.units, spec.read_options),
            job_plan.units,
            job_plan.partitioning,
        )
    check_schema(spec, schema, output)
    sharding = Sharding(
        shards=shard.count,
        settings=spec.settings(),
        planned_at=time.time(),
        estimate=Estimating(spec, job_plan).result(),
        label_cache_version=LabelCache(spec.label_cache, spec.storage_options).current().version
        if spec.label_cache
        else None,
    )
    job = job_record(spec, output.run_id, job_plan, models, sharding)
    stored = StoredPlan(plan=replace(job_plan, schema=schema), job=job, shards=shard.count)
    return store_plan(committer, stored, spec.storage_options, spec.input)


def finalize(command: JobSpec) -> RunSummary:
    """``batchnlp commit``: commit a sharded run once every unit of its plan is there, intact.

    ``command`` names the output, the run id and how to reach them (storage and catalog options);
    the job itself is the one its shards stored with their plan.
    """
    output = open_output(command).prepare()
    done = output.committed()
    if done is not None:
        return already_committed(output, done)
    committer = Committer(output.location, restart=output.restart)
    display = output.location.display()
    stored = read_plan(committer, command.storage_options)
    if stored is None:
        raise OutputError(
            f"{display} holds no sharded run {output.run_id}: no shard has planned it ({PLAN} is missing). Run its "
            f"shards first (batchnlp run ... --shard I/N --run-id {output.run_id}); a run without shards commits itself"
        )
    connection = {
        "output": command.output,
        "run_id": output.run_id,
        "storage_options": dict(command.storage_options),
        "catalog_options": dict(command.catalog_options),
    }
    sharding = stored.job.sharding
    spec = JobSpec.from_settings({**sharding.settings, **connection})
    owner = owner_from(os.environ, spec.lock_owner)
    with OutputLock(
        output.location, output.run_id, command.break_lock, owner=owner, fingerprint=stored.job.spec_fingerprint
    ) as lock:
        if committer.finished():  # committed by an earlier attempt (a table's commit may still be due)
            manifest = committer.read_manifest()
            if manifest.run_id != output.run_id:
                raise OutputError(f"{display} holds committed run {manifest.run_id}, not {output.run_id}")
            if output.sealed(committer) is None:  # part files: committed before, nothing to do
                add_to_cache(spec, manifest)  # unless the cache's addition was not made yet
                return RunSummary.complete_before(
                    output=display, run_id=output.run_id, manifest=manifest, units_kept=len(stored.plan.units)
                )
        else:
            ownership.refuse_foreign(output.location, ownership.take_stock(output.location))  # before it seals them
            ordered = _every_part(committer, stored, display)
            check_bad_lines(spec, ordered, final=True)
            lookup = open_lookup(spec, output.run_id, _cache_version(stored))
            context = RunContext(
                spec=spec, plan=stored.plan, output=output, committer=committer, job=stored.job, lookup=lookup
            )
            wall = time.time() - sharding.planned_at
            manifest = finish(
                context, ordered, wall=wall, kept={}, estimate=sharding.estimate, since=sharding.planned_at
            )
        lock.check_held()
        table = output.commit(committer, manifest)
        add_to_cache(spec, manifest)
    # The run's figures span its shards, from the plan to this commit.
    return RunSummary(
        output=display,
        run_id=output.run_id,
        totals=manifest.totals,
        wall_seconds=manifest.wall_seconds,
        units_run=len(stored.plan.units),
        units_kept=0,
        manifest=manifest,
        table=table,
    )


def _cache_version(stored: StoredPlan) -> int | None:
    """The label cache version the run's first shard planned with: every shard and the commit read it."""
    return stored.job.sharding.label_cache_version if stored.job.sharding else None


def _every_part(committer: Committer, stored: StoredPlan, display: str) -> list[PartResult]:
    """Every unit's result in plan order, or a JobFailed naming the units (and shards) to run again."""
    units = stored.plan.units
    intact, damaged = committer.recorded(units)
    missing = [(position, unit) for position, unit in enumerate(units) if unit.id not in intact]
    if not missing:
        return [intact[unit.id] for unit in units]
    shards = sorted({shard_of(position, stored.shards) for position, _ in missing})
    named = ", ".join(unit.id + (" (damaged)" if unit.id in damaged else "") for _, unit in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    run_id = stored.job.run_id
    raise JobFailed(
        f"run {run_id} at {display} is not complete: {len(missing)} of {len(units)} units have no intact part: "
        f"{named}{more}, of shard{'s' * (len(shards) > 1)} {', '.join(map(str, shards))} of {stored.shards}; "
        f"nothing was committed. Run those shards again (batchnlp run ... --shard {shards[0]}/{stored.shards} "
        f"--run-id {run_id}, or batchnlp submit ... --shards {stored.shards} --only-shards "
        f"{','.join(map(str, shards))} --run-id {run_id}), then commit again"
    )
