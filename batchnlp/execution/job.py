"""A job as one process of it runs it, wherever it was started: the command line, a notebook, a
scheduler's container. One call does what ``batchnlp run`` has always done around the runner:

- an AWS Batch multi-node job's **child node** only serves Dask workers to the main node
  (:func:`batchnlp.cluster.multinode.serve_child`) and returns no summary;
- every other process **starts its workers' imports first** (they take seconds, and go on while
  the job plans), then on a multi-node main node starts the scheduler and waits for every node;
- a **Spot interruption notice** drains the run as SIGTERM does (:mod:`batchnlp.execution.spot`);
- a **shard** runs its share of the units and commits nothing (:mod:`batchnlp.execution.shards`);
  its index is given, or read from the environment of an array job's child.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from batchnlp.errors import SpecError
from batchnlp.execution.shards.plan import Shard
from batchnlp.execution.shutdown import GracefulStop

if TYPE_CHECKING:
    from batchnlp.execution.runner import RunSummary
    from batchnlp.spec import JobSpec


def shard_of(shard: str | Shard | None, shards: int | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard a process runs: ``shard`` (``"3/8"``), or with ``shards`` the index from the
    environment (``AWS_BATCH_JOB_ARRAY_INDEX``, ``JOB_COMPLETION_INDEX``); None: the whole run."""
    if shard is not None and shards is not None:
        raise SpecError("--shard and --shards exclude each other: --shard names the index, --shards reads it")
    if isinstance(shard, str):
        return Shard.parse(shard)
    if shards is not None:
        return Shard.from_environment(shards, environ)
    return shard


def run_job(
    spec: JobSpec,
    shard: Shard | None = None,
    *,
    on_part: Callable[..., Any] | None = None,
    on_start: Callable[..., Any] | None = None,
    stop: GracefulStop | None = None,
) -> RunSummary | None:
    """Run ``spec`` (or its ``shard``) in this process's role; None on a multi-node child node.

    ``stop``: the caller's signal handling (the CLI installs its own before it reads the spec);
    without one, SIGTERM and SIGINT are handled here for the run's length (main thread only).
    """
    from batchnlp.cluster.local import begin_worker_imports
    from batchnlp.cluster.multinode import multinode_job, node_role, serve_child

    own_stop = stop is None
    stop = GracefulStop() if stop is None else stop
    stop.grace_seconds = spec.grace_seconds
    role = node_role(os.environ)  # an AWS Batch multi-node job's main or child node, else single
    if role.kind == "child":  # only Dask workers here, until the main node's scheduler closes
        serve_child(role, spec.device, spec.workers)
        return None
    begin_worker_imports(spec.scheduler, spec.workers, spec.device)
    from batchnlp.execution.runner import run
    from batchnlp.execution.shards.run import run_shard
    from batchnlp.execution.spot import watching

    with stop.installed() if own_stop else nullcontext(), multinode_job(spec, role) as spec, watching(stop):
        if shard is None:
            return run(spec, on_part=on_part, on_start=on_start, stop=stop)
        return run_shard(spec, shard, on_part=on_part, on_start=on_start, stop=stop)
