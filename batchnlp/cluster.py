"""The Dask cluster a job runs on: an existing one (``--scheduler``) or an embedded LocalCluster.

Only a cluster this module started is shut down; a shared cluster is left as it was found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


def local_layout(workers: int | None, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) without oversubscribing the cores.

    By default two threads per worker: intra-op parallelism for the model, while several
    processes read, tokenise and write in parallel.
    """
    cores = cores or len(os.sched_getaffinity(0))
    count = workers or max(1, cores // 2)
    return count, max(1, cores // count)


@contextmanager
def connect(scheduler: str | None, workers: int | None) -> Iterator[tuple[Any, int | None]]:
    """Yield ``(client, torch threads per worker)``; threads is None on an external cluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        if workers:
            logger.warning("--workers is ignored with --scheduler: the cluster's own workers are used")
        client = Client(scheduler, timeout="30s")
        try:
            yield client, None
        finally:
            client.close()
        return
    count, threads = local_layout(workers)
    cluster = LocalCluster(
        n_workers=count,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.WARNING,
    )
    client = Client(cluster)
    try:
        yield client, threads
    finally:
        client.close()
        cluster.close()
