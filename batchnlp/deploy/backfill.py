"""``batchnlp submit --from DATE --to DATE``: one run per date, each under its own run id (the date).

A backfill is usually rerun: after a failed night, after adding dates, after a partial outage.
So every date is checked first, at its own output, the way ``batchnlp run`` renders the spec for
that date: a date whose output already holds the commit of its run id is skipped and said so;
the others are submitted with ``--run-date DATE --run-id DATE``, which makes a duplicate
submission of one date the same run (``--resume`` finishes it, or exits 0 once committed).
Part files commit to OUTPUT itself, so two dates rendering the same OUTPUT would overwrite each
other: that is refused before anything is submitted. Tables keep one commit per run id, so any
number of dates may share one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from batchnlp.errors import SpecError
from batchnlp.spec import JobSpec

MAX_DATES = 366  # a typo in a year should not submit a decade of jobs


@dataclass(frozen=True)
class BackfillDate:
    """One date of a backfill: where its output is and whether its run is committed there."""

    day: str
    output: str  # as a person reads it (credentials masked)
    committed: str | None  # why it is skipped (what holds the commit); None: submit it
    note: str = ""  # said beside a submitted date


def dates(first: str, last: str) -> list[str]:
    """Every date from ``first`` to ``last``, both included."""
    try:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError as e:
        raise SpecError(f"--from and --to take dates such as 2026-11-01: {e}") from None
    if end < start:
        raise SpecError(f"--to {last} is before --from {first}")
    count = (end - start).days + 1
    if count > MAX_DATES:
        raise SpecError(f"--from {first} --to {last} is {count} dates; backfill at most {MAX_DATES} at a time")
    return [(start + timedelta(days=n)).isoformat() for n in range(count)]


def date_spec(spec_ref: str, params: Mapping[str, str], day: str) -> JobSpec:
    """The job spec ``batchnlp run --spec SPEC --run-date DAY --run-id DAY`` would run."""
    from batchnlp.spec.merge import compose

    return compose(spec_ref, params=params, run_date=day, overrides={"run_id": day})


def check(spec_ref: str, params: Mapping[str, str], days: list[str]) -> list[BackfillDate]:
    """Each date's output and whether its run is committed there; refuses dates that share part-file OUTPUT."""
    specs = {day: date_spec(spec_ref, params, day) for day in days}
    _refuse_shared_output(spec_ref, specs)
    return [_check_date(day, spec) for day, spec in specs.items()]


def _refuse_shared_output(spec_ref: str, specs: Mapping[str, JobSpec]) -> None:
    seen: dict[str, str] = {}
    for day, spec in specs.items():
        if spec.table_output:
            continue
        key = spec.output.rstrip("/")
        if key in seen:
            raise SpecError(
                f"job spec {spec_ref} writes {seen[key]} and {day} to the same output {_shown(spec)}: "
                "their part files would overwrite each other; put ${run_date} (or ${yesterday}) in its output, "
                "e.g. output: s3://bucket/labels/dt=${run_date}/"
            )
        seen[key] = day


def _check_date(day: str, spec: JobSpec) -> BackfillDate:
    from batchnlp.io.storage import storage_errors
    from batchnlp.ledger.output import open_output

    with storage_errors("read", _shown(spec)):  # an unreachable store is no bug: say so, exit 1
        output = open_output(spec).prepare()
        if spec.table_output:
            commit = output.committed()
            held = None if commit is None else f"{commit.kind} {commit.version} of {_shown(spec)} records run {day}"
            return BackfillDate(day, _shown(spec), held)
        return _check_files(day, spec, output.location)


def _check_files(day: str, spec: JobSpec, location: Any) -> BackfillDate:
    from batchnlp.ledger.commit import Committer

    committer = Committer(location)
    if not committer.finished():
        return BackfillDate(day, _shown(spec), None)
    run_id = committer.read_manifest().run_id
    if run_id == day:
        return BackfillDate(day, _shown(spec), f"{_shown(spec)} holds its commit (_SUCCESS, run {day})")
    # The date's job would find OUTPUT committed and exit 0 (a shard of it would refuse): nothing to submit.
    held = (
        f"{_shown(spec)} holds run {run_id}'s commit (_SUCCESS); to relabel the date, run it by hand with --overwrite"
    )
    return BackfillDate(day, _shown(spec), held)


def _shown(spec: JobSpec) -> str:
    from batchnlp.util.redaction import redact_url

    return redact_url(spec.output)


def backfill(base: Any, first: str, last: str, dry_run: bool, region: str | None = None) -> list[str]:
    """Submit ``base`` (a Submission or ShardedSubmission) for every date from ``first`` to ``last``
    not committed yet; the lines to print: each date, submitted or skipped and why."""
    from batchnlp.deploy.aws_batch import ShardedSubmission, job_name, send

    submission = base.submission if isinstance(base, ShardedSubmission) else base
    spec = submission.spec
    checked = check(spec, submission.params, dates(first, last))
    todo = [d for d in checked if d.committed is None]
    verb = "would submit" if dry_run else "submitting"
    shape = f" ({base.shards} shards, then commit)" if isinstance(base, ShardedSubmission) else ""
    lines = [f"backfill {first} to {last} of {spec}: {verb} {len(todo)}, skipping {len(checked) - len(todo)}"]
    for d in checked:
        if d.committed is not None:
            lines.append(f"{d.day} skipped: {d.committed}")
            continue
        lines.append(
            f"{d.day} {verb} {job_name(spec, d.day)}{shape} -> {d.output}" + (f" ({d.note})" if d.note else "")
        )
        if not dry_run:
            lines += ["  " + line for line in send(for_date(base, d.day), False, region)]
    return lines


def for_date(base: Any, day: str) -> Any:
    """``base`` (a Submission or ShardedSubmission) for ``day``: the date is its run date and run id."""
    from batchnlp.deploy.aws_batch import ShardedSubmission

    if isinstance(base, ShardedSubmission):
        return dataclasses.replace(base, submission=for_date(base.submission, day))
    return dataclasses.replace(base, run_date=day, run_id=day)
