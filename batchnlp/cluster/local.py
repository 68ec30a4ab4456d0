"""The Dask cluster a job runs on: an existing one (``--scheduler``) or an embedded local one.

Locally, CPU jobs get one single-threaded worker process per core; GPU jobs get worker
processes pinned to GPUs, each started with ``CUDA_VISIBLE_DEVICES`` naming only its own GPU
(the way dask-cuda's ``LocalCUDACluster`` pins them), so ``cuda`` in that process is its GPU
and no process creates a context on another. Only a cluster this module started is shut down; a
shared cluster is left as it was found.

The embedded cluster is the run's alone: its scheduler, nannies, workers and HTTP server listen
on 127.0.0.1 only, and every connection is mutual TLS with certificates made for the run
(:mod:`batchnlp.cluster.tls`), since another user of the machine can reach loopback too and a Dask
scheduler runs whatever function a client sends.

CPU workers are forked from one process that has imported Dask, torch and the model code
(a multiprocessing forkserver, started by :func:`start_worker_imports` as the command begins):
each spawned worker used to import them itself, seconds of CPU per worker, all before the first
row. Forked, the workers pay the imports once, on one core, while the driver plans and
estimates on the other. GPU workers are still spawned: nothing may touch CUDA before they are
pinned to their GPU, and they start on machines with cores to spare.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from batchnlp.util.compat import start_spec_workers, stop_fork_server

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")


# Resident memory of one worker process holding a DistilBERT-base model (measured: ~1.1 GB).
MEMORY_PER_WORKER = 1.5 * 2**30
# A unit whose worker dies (a SIGKILL, a reclaimed node, the OOM killer) is rerun on another
# worker this many times; a unit that kills more workers than that (a row that exhausts memory
# every time) fails the job with Dask's KilledWorker, naming the unit, instead of killing them all.
ALLOWED_FAILURES = 3
# Units in flight per GPU worker: one on the GPU while another reads, tokenises and writes.
UNITS_PER_GPU_WORKER = 2
# One Python process feeds a GPU under 1M tokens/s: tokenising and kernel launches hold its
# GIL. Measured on an H200 (DistilBERT-base, bf16, 400,000 rows, tokens/s after the first row):
# 1 process 0.88M, 2 processes 1.41M, 3 processes 1.78M. Each holds its own model copy (~130 MB).
WORKERS_PER_GPU = 3
# What a forked CPU worker has imported before it starts: Dask, batchnlp's worker side, the
# model code its tasks load (torch, batchnlp's DistilBERT, transformers' tokenizers and configs),
# and pandas where it is installed (a dev install; the image has none), which pyarrow imports at a
# process's first ``pa.array`` (a worker's first unit read: ~1 s); the fork server skips a module
# it cannot import. Not transformers' modeling code (~3 s): only a checkpoint of another family
# needs it, and its worker imports it then.
WORKER_IMPORTS = (
    "distributed",
    "pandas",
    "batchnlp.execution.worker",
    "batchnlp.inference.int8",
    "batchnlp.tasks.classify",
    "batchnlp.tasks.qa",
    "batchnlp.inference.distilbert",
    "batchnlp.inference.backends.onnx_runtime",
    "onnxruntime",
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.tokenization_auto",
)


@dataclass(frozen=True)
class Layout:
    """How a local cluster is cut: processes, Dask threads and torch threads each, GPUs."""

    workers: int
    threads: int  # units each worker runs at once
    torch_threads: int
    gpus: tuple[str, ...] = ()  # each worker's CUDA_VISIBLE_DEVICES; empty on CPU


def visible_gpus(environ: dict[str, str] | None = None, dev: Path = Path("/dev")) -> tuple[str, ...]:
    """The GPUs this process may use, without importing torch (2-4 s of start-up on a small host).

    ``CUDA_VISIBLE_DEVICES`` when set (indices or UUIDs, as CUDA reads it: up to the first
    invalid entry), else as many indices as there are NVIDIA device files. CUDA numbers the
    GPUs it sees from 0, whatever the files are called: a container given the host's third GPU
    (AWS Batch on a multi-GPU instance) has only ``/dev/nvidia2``, which CUDA calls device 0.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        gpus = []
        for entry in environ["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            gpus.append(entry)
        return tuple(gpus)
    found = (re.fullmatch(r"nvidia(\d+)", p.name) for p in dev.glob("nvidia*")) if dev.is_dir() else ()
    return tuple(str(i) for i in range(sum(1 for m in found if m)))


def local_layout(
    workers: int | None,
    device: str = "cpu",
    *,
    cores: int | None = None,
    memory: int | None = None,
    gpus: tuple[str, ...] | None = None,
) -> Layout:
    """The local cluster for ``device`` on this machine, never oversubscribing cores or memory.

    CPU: one single-threaded process per core, as memory allows: on CPU, processes beat
    intra-op threads (5,000 rows, DistilBERT-base, 2 cores: 2 × 1 thread did 25.0 rows/s,
    1 × 2 threads 21.8), and they read, tokenise and write in parallel too.
    GPU (``cuda``, or ``auto`` where GPUs are visible): ``WORKERS_PER_GPU`` processes per
    GPU; ``--workers N`` starts N, dealt round-robin over the GPUs.
    """
    import psutil

    cores = cores or len(os.sched_getaffinity(0))
    if device == "cpu":
        gpus = ()
    elif gpus is None:
        gpus = visible_gpus()
    if gpus:
        count = workers or WORKERS_PER_GPU * len(gpus)
        pinned = tuple(gpus[i % len(gpus)] for i in range(count))
        return Layout(count, UNITS_PER_GPU_WORKER, max(1, cores // count), pinned)
    memory = memory or psutil.virtual_memory().available
    count = workers or max(1, min(cores, int(memory // MEMORY_PER_WORKER)))
    return Layout(count, 1, max(1, cores // count))


@contextmanager
def connect(spec: JobSpec) -> Iterator[tuple[Any, int | None]]:
    """Yield ``(client, torch threads per worker)`` for ``spec``'s job; threads is None on an external cluster.

    A ``tls://`` scheduler is reached with the spec's TLS files, else Dask's TLS config
    (:func:`batchnlp.cluster.tls.client_security`).
    """
    from distributed import Client

    from batchnlp.cluster.tls import client_security, issue

    scheduler, workers, device = spec.scheduler, spec.workers, spec.device
    if scheduler:
        if workers:
            logger.info("--workers with --scheduler only sizes the units; the cluster's own workers run them")
        security = client_security(scheduler, spec.tls_ca_file, spec.tls_cert, spec.tls_key)
        client = Client(scheduler, timeout="30s", security=security)
        try:
            yield client, None
        finally:
            client.close()
        return
    layout = local_layout(workers, device)
    # TLS on loopback too, with certificates only this process and its workers hold: another
    # user of this machine can reach 127.0.0.1, and the scheduler runs what any client sends.
    cluster = start_local_cluster(layout, security=issue("embedded").security())
    client = Client(cluster)
    try:
        client.wait_for_workers(layout.workers)
        yield client, layout.torch_threads
    finally:
        client.close()
        cluster.close()


def start_local_cluster(
    layout: Layout,
    workers: dict[int, dict[str, Any]] | None = None,
    host: str | None = None,
    port: int = 0,
    security: Any = None,
) -> Any:
    """The one place a LocalCluster is made: worker processes as ``layout`` says, each pinned to its GPU if any.

    ``workers`` replaces the layout's own workers with these (worker name → extra options), as an
    AWS Batch main node names and sizes its own; ``host`` and ``port`` place the scheduler where
    other machines reach it (default: loopback, any free port), and its workers and nannies with
    it; ``security`` (a :class:`distributed.Security`) makes every connection of the cluster
    ``tls://``. The HTTP server (health and metrics: distributed always serves it) listens on
    loopback only, wherever the scheduler listens.
    """
    import dask
    from distributed import LocalCluster

    if workers is None:  # the layout's own, each pinned to its GPU if any
        gpus = layout.gpus or (None,) * layout.workers
        workers = {name: {"env": {"CUDA_VISIBLE_DEVICES": gpu}} if gpu else {} for name, gpu in enumerate(gpus)}
    forked = forks_workers(layout)
    if forked:
        start_worker_imports()
    settings = {
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
        # Only while the workers start: a worker the nanny restarts later is spawned, which costs
        # seconds once and never hands a process another cluster's fork server.
        "distributed.worker.multiprocessing-method": "forkserver" if forked else "spawn",
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            host=host,
            scheduler_port=port,
            security=security,
            n_workers=0,
            threads_per_worker=layout.threads,
            processes=True,
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.WARNING,
        )
        for name, options in workers.items():
            # A forked worker's environment is the fork server's, from when it started: it gets
            # the driver's as it is now, as a spawned worker inherits it.
            env = {**(os.environ if forked else {}), **options.get("env", {})}
            cluster.worker_spec[name] = {
                **cluster.new_spec,
                "options": {**cluster.new_spec["options"], **options, "env": env},
            }
        start_spec_workers(cluster)
    return cluster


def begin_worker_imports(scheduler: str | None, workers: int | None, device: str) -> None:
    """:func:`start_worker_imports` when this command will start a local cluster of CPU workers."""
    if scheduler is None and forks_workers(local_layout(workers, device)):
        start_worker_imports()


def forks_workers(layout: Layout) -> bool:
    """Whether this layout's workers are forked from the fork server (CPU, on Linux) rather than spawned."""
    return not layout.gpus and sys.platform == "linux"


@functools.cache  # once per process; forking a worker restarts the server if it has died
def start_worker_imports() -> None:
    """Start the fork server that CPU workers are forked from, importing :data:`WORKER_IMPORTS` in the
    background; returns at once. Called as a command begins, so the imports overlap its planning."""
    import atexit
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_IMPORTS))
    forkserver.ensure_running()
    # Stopped as this process exits, even in the middle of its imports. A fork server exits by
    # itself when its parent is gone, but only once its imports are done: a command that ends
    # before starting a cluster (a refused or finished run) would leave it importing for seconds,
    # holding the command's stdout and stderr, so a caller reading them through a pipe waits for
    # it. By exit, the command has closed its cluster: no worker is left for the server to watch.
    atexit.register(stop_fork_server)


def worker_imports_started() -> bool:
    """Whether this process started the fork server (:func:`start_worker_imports`)."""
    return start_worker_imports.cache_info().currsize > 0


def run_forked(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a process forked from the fork server, in this process's environment as it
    is now; returns its result or raises its exception. Blocks until the fork server's imports are
    done, then for the call: for work that needs those libraries but should not import them again
    here (seconds of CPU that the workers' own start-up wants)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_call_and_send, args=(send, dict(os.environ), function, args), daemon=True)
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:  # the child died before it could send anything
        outcome = None
    finally:
        receive.close()
        child.join()
    if outcome is None:
        raise RuntimeError(f"the process running {function.__name__} exited with code {child.exitcode}")
    succeeded, value = outcome
    if not succeeded:
        raise value
    return value


def _call_and_send(send: Any, environ: dict[str, str], function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.clear()
    os.environ.update(environ)
    try:
        outcome = (True, function(*args))
    except Exception as e:  # raised again in the caller
        outcome = (False, e)
    send.send(outcome)
