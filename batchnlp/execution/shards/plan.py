"""Sharded runs: one run's units split over N processes that never talk to each other.

A night too large for one machine runs as N shards: AWS Batch array children (on Spot, where
multi-node jobs cannot go), Kubernetes indexed Jobs, or a shell loop. Each shard is a plain
``batchnlp run --shard I/N``: it takes its fixed share of the run's units, writes their parts
and progress records, and never commits. ``batchnlp commit`` then checks every unit of the plan
is there with its recorded sha256 and makes the one commit. A shard that dies costs its own
units, and rerunning it keeps its finished parts, as ``--resume`` does for a whole run.

Every shard and every retry must see the same units, yet automatic unit sizing depends on the
machine and files may arrive while shards start. So the first shard to get there stores its
plan, create-only, under the run's directory (:data:`PLAN`); the others, and the finalize step,
use the stored one. Two shards that plan at once both do the work, and one of them wins.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchnlp.errors import InputError, OutputError, SpecError
from batchnlp.execution.plan import Plan
from batchnlp.io.formats import Partitioning, WorkUnit
from batchnlp.io.layout import JOB_RECORD, PLAN, PROGRESS
from batchnlp.io.storage import InputFile, Location, create_only, input_file, storage_errors, write_atomic
from batchnlp.ledger.commit import Committer, json_bytes
from batchnlp.ledger.record import JobRecord, decode_schema, encode_schema, redacted_unit
from batchnlp.util.compat import strip_protocol
from batchnlp.util.redaction import redact_url, unredact_url

# Where a shard learns its index when the command line gives only the count (--shards N).
INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 0, as ``AWS_BATCH_JOB_ARRAY_INDEX``) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as ``--shard`` takes it."""
        index, _, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise SpecError(f"--shard takes INDEX/COUNT, such as 3/8 (index from 0), got {text!r}") from None
        return shard.checked()

    @classmethod
    def from_environment(cls, count: int, environ: Mapping[str, str] = os.environ) -> Shard:
        """``--shards N``: the index from an array job's or an indexed Job's environment."""
        for name in INDEX_VARIABLES:
            if environ.get(name, "").strip().isdigit():
                return cls(int(environ[name]), count).checked()
        raise SpecError(
            f"--shards {count} takes this shard's index from {' or '.join(INDEX_VARIABLES)}, and neither is set; "
            "run it as an AWS Batch array child or a Kubernetes indexed Job, or pass --shard INDEX/COUNT"
        )

    def checked(self) -> Shard:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SpecError(f"shard {self.index}/{self.count} does not exist: the index runs from 0 to COUNT-1")
        return self

    def take(self, units: list[WorkUnit]) -> list[WorkUnit]:
        """This shard's units: every COUNT-th, starting at INDEX, so each shard gets a spread of the input."""
        return units[self.index :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(position: int, count: int) -> int:
    """The shard that runs the unit at ``position`` of the plan (see :meth:`Shard.take`)."""
    return position % count


@dataclass(frozen=True, kw_only=True)
class StoredPlan:
    """A run's plan as its shards share it: the units, the input they came from, the parts' schema.

    It is stored under OUTPUT, so its URLs are stored redacted (no user info, no presigned query);
    a shard that reads it back puts its own input URL's credentials back (:func:`unredact_url`).
    """

    plan: Plan
    job: JobRecord  # with its Sharding: the spec's settings, when it was planned, the estimate
    shards: int

    def to_record(self) -> dict[str, Any]:
        p = self.plan
        return {
            "job": self.job.to_record(),
            "shards": self.shards,
            "source": redact_url(p.source.url),
            "format": p.format,
            "files": [dataclasses.asdict(dataclasses.replace(f, path=redact_url(f.path))) for f in p.files],
            "units": [dataclasses.asdict(redacted_unit(u)) for u in p.units],
            "schema": encode_schema(p.schema),
            "rows_per_unit": p.rows_per_unit,
            "partitioning": None
            if p.partitioning is None
            else {"root": redact_url(p.partitioning.root), "schema": encode_schema(p.partitioning.schema)},
            "table": p.table,
            "incremental": p.incremental,
        }

    @classmethod
    def from_record(
        cls, record: dict[str, Any], storage_options: Mapping[str, str], source: str | None = None
    ) -> StoredPlan:
        """The plan stored in ``record``; ``source``, the reader's input URL, gives back its credentials."""
        url = source if source is not None and redact_url(source) == record["source"] else record["source"]

        def whole(path: str) -> str:
            return unredact_url(path, url)

        partitioning = record["partitioning"]
        plan = Plan(
            source=Location(url, storage_options),
            files=[InputFile(**{**f, "path": whole(f["path"])}) for f in record["files"]],
            format=record["format"],
            units=[WorkUnit(**{**u, "path": whole(u["path"])}) for u in record["units"]],
            schema=decode_schema(record["schema"]),
            rows_per_unit=record["rows_per_unit"],
            partitioning=None
            if partitioning is None
            else Partitioning(whole(partitioning["root"]), decode_schema(partitioning["schema"])),
            table=record["table"],
            incremental=record.get("incremental"),
        )
        return cls(plan=plan, job=JobRecord.from_record(record["job"]), shards=record["shards"])


def read_plan(committer: Committer, storage_options: Mapping[str, str], source: str | None = None) -> StoredPlan | None:
    """The run's stored plan, or None when no shard has planned it yet; ``source``: the reader's input URL."""
    path = committer.path(PLAN)
    with storage_errors("read", committer.fs.unstrip_protocol(path)):
        if not committer.fs.exists(path):
            return None
        return StoredPlan.from_record(json.loads(committer.fs.cat_file(path)), storage_options, source)


def store_plan(
    committer: Committer, stored: StoredPlan, storage_options: Mapping[str, str], source: str | None = None
) -> StoredPlan:
    """Store ``stored`` unless another shard stored its plan first; either way, the run's plan.

    The job record goes to ``_progress/_job.json`` as well, where ``--resume`` and ``inspect`` look.
    """
    if stored.plan.schema is None:
        raise ValueError("a stored plan needs the parts' schema")
    if not create_only(committer.fs, committer.path(PLAN), json_bytes(stored.to_record())):
        stored = read_plan(committer, storage_options, source)
    write_atomic(committer.fs, committer.path(f"{PROGRESS}/{JOB_RECORD}"), json_bytes(stored.job.to_record()))
    return stored


def check_same_job(
    stored: StoredPlan, *, spec_fingerprint: str, model_versions: dict[str, str], shards: int, output: str
) -> None:
    """A shard or finalize step of another job, or cut another way, must not mix into this run."""
    changed = []
    if stored.job.spec_fingerprint != spec_fingerprint:
        changed.append("its job spec")
    models, planned = model_versions, stored.job.model_versions
    changed += [f"the model of task {name!r}" for name in models if planned.get(name) != models[name]]
    if shards and stored.shards != shards:
        changed.append(f"its shard count ({stored.shards}, this one {shards})")
    if changed:
        raise OutputError(
            f"run {stored.job.run_id} at {output} was planned with other settings: "
            + " and ".join(changed)
            + " differ; run every shard of a run with the same spec, models and shard count, "
            "or give this job another --run-id"
        )


def changed_inputs(stored: StoredPlan, units: list[WorkUnit]) -> list[str]:
    """The input files of ``units`` no longer as the plan listed them (size, ETag or mtime), described.

    A unit is a byte or row range of a file: read from a replaced file, it would label other rows
    than the plan's, or cut lines in half.
    """
    fs, _ = stored.plan.source.split()
    planned = {f.path: f for f in stored.plan.files}
    changed = []
    with storage_errors("read", stored.plan.source.display(), InputError, what="input"):
        for path in sorted({strip_protocol(fs, unit.path) for unit in units} & set(planned)):
            try:
                now = input_file(path, fs.info(path))
            except FileNotFoundError:
                changed.append(f"{stored.plan.source.display(path)} (deleted)")
                continue
            if now != planned[path]:
                was = planned[path]
                changed.append(
                    f"{stored.plan.source.display(path)} ({was.size} bytes, {was.etag} → {now.size}, {now.etag})"
                )
    return changed


def staged_table(output: str, run_id: str, storage_options: Mapping[str, str]) -> str | None:
    """The table format of OUTPUT when it holds the staged shards of ``run_id`` (so ``commit`` needs no
    --output-format): the first in the registry whose tables lie at a path (Delta), else None."""
    from batchnlp.io.tables import TABLES
    from batchnlp.io.tables.base import RUNS

    location = Location(output, storage_options)
    fs, _ = location.split()
    with storage_errors("read", location.display()):
        staged = fs.exists(location.child(f"{RUNS}/{run_id}/{PLAN}"))
    return next((t.name for t in TABLES.values() if t.addressed_by == "path"), None) if staged else None


def shard_lock(shard: Shard) -> str:
    """The lock one shard holds while it runs: a second delivery of the same shard waits it out."""
    return f"{PROGRESS}/_lock-shard-{shard.index:05d}-of-{shard.count:05d}.json"
