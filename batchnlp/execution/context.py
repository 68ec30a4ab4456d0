"""What the steps of one run share, in one value instead of a dozen parameters.

A run (:func:`batchnlp.execution.runner.run`), one shard of a run and the commit of a sharded run
(:mod:`batchnlp.execution.shards.run`) go through the same steps: record the units that finish,
build the manifest and the report. Each step reads the job, its plan, where the rows go and the
caller's callbacks from a :class:`RunContext`, built once the plan and the job record are known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from batchnlp.execution.plan import Plan
from batchnlp.execution.shutdown import GracefulStop
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.output import Output
from batchnlp.ledger.record import JobRecord, PartResult
from batchnlp.spec import JobSpec


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """One run's job, plan, destination and the caller's callbacks; the Dask client once connected."""

    spec: JobSpec
    plan: Plan  # a shard's and the commit step's: the plan the run's first shard stored
    output: Output  # bound to the run (Output.prepare): its run id and directory
    committer: Committer  # the run directory's control files
    job: JobRecord  # what _progress/_job.json says of this run; the manifest takes its model versions from it
    on_part: Callable[[PartResult], None] | None = None  # each unit's result as it is recorded
    on_start: Callable[..., None] | None = None  # once the units to run are known (runner.run's docstring)
    stop: GracefulStop | None = None  # SIGTERM turned into a drain (batchnlp.execution.shutdown)
    client: Any = None  # the Dask client, while connected; None when no unit is left to run
    threads: int | None = None  # each worker's torch threads, when this process started the workers
    lookup: Any = None  # --label-cache: the cache version this run reads and where its new labels go

    @property
    def run_id(self) -> str:
        return self.output.run_id

    def connected(self, client: Any, threads: int | None) -> RunContext:
        """This context with the cluster that runs its units (:func:`batchnlp.cluster.local.connect`'s)."""
        return replace(self, client=client, threads=threads)
