"""The Python API: each ``batchnlp`` command as one function, doing everything the command does.

The CLI (:mod:`batchnlp.cli`) parses flags, calls one of these and prints; a notebook, an
Airflow task or a test calls them directly::

    import batchnlp

    spec = batchnlp.job_spec("jobs/nightly-labels.yaml", run_date="2026-11-24", workers=2)
    summary = batchnlp.run(spec)
    print(summary.totals.rows_out, summary.output)

Every function raises a :class:`batchnlp.errors.BatchnlpError` on failure, whose ``exit_code``
is the command's (2: fix the input, spec or model first; 1: retrying may help; 3: too many bad
lines) and whose message says what to do. A spec may be given as a :class:`JobSpec`, a mapping
of settings (a YAML spec's keys), or the path or URL of a YAML spec file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchnlp.distillation.job import DistillResult
    from batchnlp.execution.runner import RunSummary
    from batchnlp.execution.shards.plan import Shard
    from batchnlp.execution.shutdown import GracefulStop
    from batchnlp.spec import JobSpec


def job_spec(
    source: str | PathLike[str] | None = None,
    /,
    *,
    params: Mapping[str, str] | None = None,
    run_date: str | None = None,
    **settings: Any,
) -> JobSpec:
    """A validated JobSpec: the spec file ``source`` (a path, an s3:// URL or ``env:VARIABLE``;
    None: none) with ``settings`` over it, as flags override it on the command line, and
    ``${name}`` placeholders filled from ``params`` and ``run_date``.

    ``settings`` are the spec file's keys: ``input``, ``output``, ``tasks``, ``models``,
    ``storage_options``, ``workers``, ``device``... (docs/job-specs.md). Raises SpecError
    listing every problem at once.
    """
    from batchnlp.spec.merge import compose

    return compose(source, params=params, run_date=run_date, overrides=settings)


def run(
    spec: JobSpec | Mapping[str, Any] | str | PathLike[str],
    *,
    shard: str | Shard | None = None,
    shards: int | None = None,
    on_part: Callable[..., Any] | None = None,
    on_start: Callable[..., Any] | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary | None:
    """Run a job to its one commit, as ``batchnlp run`` does, and return its summary.

    ``shard="3/8"`` runs only that shard's units and commits nothing (:func:`commit` does, once
    every shard is done); ``shards=8`` takes the index from the environment of an AWS Batch array
    child or a Kubernetes indexed Job. In an AWS Batch multi-node job the main node runs the job
    over every node and a child node serves its workers and returns None. A Spot interruption
    notice drains the run as SIGTERM does; without a ``stop`` of the caller's, SIGTERM and SIGINT
    are handled for the run's length. ``on_start`` and ``on_part`` receive progress
    (:class:`batchnlp.observe.progress.ProgressReporter` shows it).
    """
    from batchnlp.execution.job import run_job, shard_of

    part = shard_of(shard, shards)
    return run_job(_spec(spec), part, on_part=on_part, on_start=on_start, stop=stop)


def commit(
    output: str | None = None,
    *,
    run_id: str,
    spec: JobSpec | Mapping[str, Any] | str | PathLike[str] | None = None,
    output_format: str | None = None,
    catalog: str | None = None,
    catalog_options: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    break_lock: bool | None = None,
) -> RunSummary:
    """Commit the sharded run ``run_id`` at ``output`` (or at the output of the shards' ``spec``)
    once every unit of its plan has its part, intact, as ``batchnlp commit`` does.

    The job itself is the one the shards stored with their plan, so only where it is and how to
    reach it are needed. ``output_format``: delta or iceberg for a table; default part files, or
    Delta when ``output`` holds the run's staging directory.
    """
    from batchnlp.errors import SpecError
    from batchnlp.execution.shards.plan import staged_table
    from batchnlp.execution.shards.run import finalize
    from batchnlp.spec import JobSpec

    if spec is not None:
        return finalize(_spec(spec, run_id=run_id))
    if not output:
        raise SpecError("name the run's OUTPUT, or pass the shards' --spec")
    options = dict(storage_options or {})
    settings = {
        "input": "-",  # the run's stored plan holds its input
        "output": output,
        "output_format": output_format or staged_table(output, run_id, options),
        "run_id": run_id,
        "catalog": catalog,
        "catalog_options": dict(catalog_options or {}),
        "storage_options": options,
        "break_lock": break_lock,
    }
    return finalize(JobSpec.from_settings(settings))


def plan(
    spec: JobSpec | Mapping[str, Any] | str | PathLike[str],
    *,
    shards: int = 1,
    tokens_per_second: float | None = None,
    gpu_hour_price: float | None = None,
) -> dict[str, Any]:
    """What :func:`run` with ``spec`` would cost, writing nothing, as ``batchnlp plan --json``
    prints it: files, bytes and rows, the units, tokens and padding counted with each task's real
    tokenizer on a sample, and wall time, machine-hours and cost for 1 to ``shards`` shards."""
    from batchnlp.execution.estimate import plan_run
    from batchnlp.execution.plan import check_columns
    from batchnlp.execution.plan import plan as plan_units

    job = _spec(spec)
    units = plan_units(job)
    if units.schema is not None:
        check_columns(job, units.schema)
    return plan_run(job, units, shards, tokens_per_second, gpu_hour_price)


def distill(
    teacher_output: str,
    student_dir: str,
    *,
    task: str | None = None,
    output_format: str | None = None,
    catalog: str = "default",
    catalog_options: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    teacher_model: str | None = None,
    student_init: str | None = None,
    layers: int | None = None,
    hidden: int | None = None,
    eval_fraction: float = 0.1,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    **training: Any,
) -> DistillResult:
    """Train a smaller student on the labels of a committed run (written with ``keep_probs``),
    then measure it against its teacher on held-out rows, as ``batchnlp distill`` does.

    ``training``: epochs, batch_size, lr, temperature, alpha, seed, max_length
    (:class:`batchnlp.distillation.train.TrainSettings`, whose defaults apply).
    """
    from batchnlp.distillation.data import TeacherSource
    from batchnlp.distillation.job import DistillSpec
    from batchnlp.distillation.job import distill as train_student
    from batchnlp.distillation.train import TrainSettings
    from batchnlp.errors import SpecError

    if resume and overwrite:
        raise SpecError("--resume and --overwrite exclude each other; pick one")
    unknown = sorted(set(training) - set(TRAINING))
    if unknown:
        raise SpecError(f"distill takes no setting {', '.join(unknown)}; training settings: {', '.join(TRAINING)}")
    source = TeacherSource(
        output=teacher_output,
        output_format=output_format,
        storage_options=dict(storage_options or {}),
        catalog=catalog,
        catalog_options=dict(catalog_options or {}),
    )
    spec = DistillSpec(
        source=source,
        student_dir=student_dir,
        task=task,
        teacher_model=teacher_model,
        student_init=student_init,
        layers=layers,
        hidden=hidden,
        train=TrainSettings(**training),
        eval_fraction=eval_fraction,
        device=device,
        precision=precision,
        mode="resume" if resume else "overwrite" if overwrite else "new",
    )
    return train_student(spec, on_step)


TRAINING = ("epochs", "batch_size", "lr", "temperature", "alpha", "seed", "max_length")  # TrainSettings a user sets


@dataclasses.dataclass(frozen=True, kw_only=True)
class Submitted:
    """What :func:`submit` did: ``lines`` (a dry run: the request(s) as JSON; else each job
    submitted, or each date of a backfill), and ``note``, what a dry run's request cannot show
    (its ``secrets`` variables), or None."""

    lines: list[str]
    note: str | None


def submit(
    spec: str,
    *,
    queue: str,
    job_definition: str,
    params: Mapping[str, str] | None = None,
    nodes: int | None = None,
    shards: int | None = None,
    only_shards: Sequence[int] = (),
    run_id: str | None = None,
    finalize_queue: str | None = None,
    finalize_job_definition: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    name: str | None = None,
    region: str | None = None,
    run_date: str | None = None,
    run_args: Sequence[str] = (),
    dry_run: bool = False,
) -> Submitted:
    """Submit a job spec (a local file, sent inline, or a URL the container reads) to AWS Batch,
    as ``batchnlp submit`` does: one job, a multi-node job (``nodes``), an array of ``shards``
    and the commit job that waits for them, or one run per date from ``date_from`` to
    ``date_to`` (dates already committed are skipped). ``run_args`` go to ``batchnlp run`` in the
    container; ``secrets`` map variables to Secrets Manager or SSM ARNs (the one way to pass a
    credential)."""
    from batchnlp.deploy import aws_batch as batch
    from batchnlp.errors import SpecError

    if shards is None and (only_shards or finalize_queue or finalize_job_definition):
        raise SpecError("--only-shards, --finalize-queue and --finalize-job-definition need --shards N")
    if only_shards and not run_id:
        raise SpecError("--only-shards reruns shards of one run: name it, --run-id ID (by default its date)")
    backfill = date_from or date_to
    if backfill and not (date_from and date_to):
        raise SpecError("a backfill needs both --from DATE and --to DATE")
    if backfill and (run_date or run_id or name):
        raise SpecError("--from/--to set each run's date, id and name: drop --run-date, --run-id, --name")
    base: Any = batch.Submission(
        spec=spec,
        queue=queue,
        job_definition=job_definition,
        params=dict(params or {}),
        run_args=tuple(run_args),
        environment=dict(env or {}),
        nodes=nodes,
        name=name,
        run_date=run_date,
        run_id=run_id,
        secrets=dict(secrets or {}),
    )
    if shards is not None:
        base = batch.ShardedSubmission(
            submission=base,
            shards=shards,
            finalize_queue=finalize_queue,
            finalize_job_definition=finalize_job_definition,
            only=tuple(sorted(set(only_shards))),
        )
    if date_from and date_to:
        from batchnlp.deploy.backfill import backfill as submit_dates

        lines = submit_dates(base, date_from, date_to, dry_run, region)
    else:
        lines = batch.send(base, dry_run, region)
    return Submitted(lines=lines, note=batch.secret_note(base) if dry_run else None)


def _spec(spec: JobSpec | Mapping[str, Any] | str | PathLike[str], **settings: Any) -> JobSpec:
    """A JobSpec of what the functions above accept as one, with ``settings`` over it."""
    from batchnlp.spec import JobSpec

    if isinstance(spec, JobSpec):
        return dataclasses.replace(spec, **settings) if settings else spec
    if isinstance(spec, Mapping):
        return JobSpec.from_settings({**spec, **settings})
    return job_spec(spec, **settings)
