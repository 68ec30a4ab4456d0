"""One Dask cluster over the nodes of an AWS Batch multi-node parallel (MNP) job.

AWS Batch starts the same container command (``batchnlp run --spec ...``) on every node of an
MNP job and tells each node its part through the environment (checked against the AWS Batch
user guide, "Environment variables" of multi-node parallel jobs):

- ``AWS_BATCH_JOB_NODE_INDEX``: this node's index, from 0;
- ``AWS_BATCH_JOB_NUM_NODES``: the number of nodes;
- ``AWS_BATCH_JOB_MAIN_NODE_INDEX``: the main node's index (equal to the node's own on the main);
- ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS``: the main node's private IPv4, on child
  nodes only.

Single-node jobs and array job children set none of these (array children have
``AWS_BATCH_JOB_ARRAY_INDEX`` instead): they run as before, on an embedded local cluster.

The main node makes the job's TLS certificates (:mod:`batchnlp.cluster.tls`) and shares them with the
child nodes through a Secrets Manager secret (:mod:`batchnlp.cluster.secret`), then starts a
Dask scheduler at ``tls://`` port 8786 of every interface and its own workers, waits until
workers of every child node have joined, then runs the job as with ``--scheduler``; closing the
scheduler at the end makes every child's workers exit. Every connection of the job is mutual
TLS: a process without the job's certificate cannot reach its scheduler, workers or nannies.
Workers listen on ports :data:`WORKER_PORTS`, nannies on :data:`NANNY_PORTS`, so the job's
security group opens those and 8786 between its nodes, nothing else. A child node runs only
workers (laid out as the embedded cluster's: one process per core on CPU,
``WORKERS_PER_GPU`` per GPU, each pinned to its GPU) that join the main node's scheduler, and
exits 0 when that scheduler goes away, quietly: the end of a job is no error in its log. AWS
Batch judges the job by the main node's exit code.

Two variables tune it (the CloudFormation template sets both):

- ``BATCHNLP_NODE_JOIN_TIMEOUT``: seconds the main node waits for every child node's workers,
  and a child node for the main node's scheduler (default :data:`JOIN_TIMEOUT`);
- ``BATCHNLP_MAIN_NODE_RESERVE_MIB``: memory (MiB) of the main node's container kept out of its
  Dask workers' memory limits, for the scheduler and the driver (default 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from batchnlp.cluster import child_worker
from batchnlp.cluster import secret as cluster_secret
from batchnlp.cluster.local import Layout, local_layout, start_local_cluster
from batchnlp.cluster.tls import JobCertificates, issue
from batchnlp.errors import JobFailed, SpecError
from batchnlp.io.worker_credentials import refuse_remote
from batchnlp.util import redaction

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

logger = logging.getLogger(__name__)

NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
SCHEDULER_PORT = 8786  # Dask's default, and the port the job's security group opens between nodes
# Each node's workers and nannies take the first free ports of these ranges (at most 50 worker
# processes a node), which the job's security group opens between its nodes as well.
WORKER_PORTS = "8800:8849"
NANNY_PORTS = "8850:8899"
MAX_WORKERS_PER_NODE = 50
JOIN_TIMEOUT_VARIABLE = "BATCHNLP_NODE_JOIN_TIMEOUT"
MAIN_NODE_RESERVE_VARIABLE = "BATCHNLP_MAIN_NODE_RESERVE_MIB"
# How long the main node waits for every child node's workers, and a child for the scheduler.
# AWS Batch launches the child nodes only once the main node's container is running ("Job
# lifecycle for MNP jobs"), in no guaranteed order or time, and each child then pulls the image
# before it starts: a CUDA image with torch is several GB compressed, and pulling and unpacking
# it on a fresh instance takes minutes (layers are decompressed one stream each), then Python
# imports torch and starts the workers. 600 s was within that range, so slow pulls failed whole
# nights; 30 minutes leaves two to three times a slow pull, and costs at most that much idle
# time on the nodes that did come when a node never does (the attempt then exits 1 and is
# retried). Override with BATCHNLP_NODE_JOIN_TIMEOUT (the template's NodeJoinTimeoutSeconds).
JOIN_TIMEOUT = 1800.0
# How long a child node's nanny gives its worker process to close at the end of the job.
WORKER_STOP_TIMEOUT = 30.0
WORKER_NAME = re.compile(r"batchnlp-node(\d+)-(\d+)")


class BatchEnvironmentError(SpecError):
    """The AWS Batch multi-node variables are inconsistent; retrying the job cannot help."""


@dataclass(frozen=True)
class NodeRole:
    """This node's part in the job: ``single`` (no MNP variables), ``main`` or ``child``."""

    kind: Literal["single", "main", "child"] = "single"
    node_index: int = 0
    num_nodes: int = 1
    main_node_index: int = 0
    main_ip: str | None = None  # children only: where the scheduler runs

    @property
    def multinode(self) -> bool:
        return self.kind != "single"

    @property
    def child_nodes(self) -> tuple[int, ...]:
        """Indices of the nodes whose workers the main node waits for."""
        return tuple(i for i in range(self.num_nodes) if i != self.main_node_index) if self.multinode else ()

    def scheduler_address(self, port: int = SCHEDULER_PORT) -> str:
        """The main node's scheduler, as a child node reaches it."""
        if self.main_ip is None:
            raise ValueError(f"a {self.kind} node has no main node address")
        return f"tls://{self.main_ip}:{port}"

    def worker_name(self, number: int) -> str:
        """Dask worker names say which node each worker runs on (and are unique in the job)."""
        return f"batchnlp-node{self.node_index}-{number}"

    def describe(self) -> str:
        if not self.multinode:
            return "single-node job"
        return f"node {self.node_index} ({self.kind}) of a {self.num_nodes}-node job"


def node_role(environ: Mapping[str, str]) -> NodeRole:
    """This node's role from the AWS Batch environment (pass ``os.environ``, or a fake in tests)."""
    names = (NODE_INDEX, NUM_NODES, MAIN_NODE_INDEX)
    present = [name for name in names if environ.get(name, "").strip()]
    if not present:
        return NodeRole()
    if len(present) < len(names):
        missing = ", ".join(name for name in names if name not in present)
        raise BatchEnvironmentError(
            f"incomplete AWS Batch multi-node environment: {', '.join(present)} set but not {missing}; "
            "AWS Batch sets all three on every node of a multi-node parallel job, and none otherwise"
        )
    problems: list[str] = []
    index, count, main = (_count(name, environ[name], problems) for name in names)
    if not problems:
        if count < 1:
            problems.append(f"{NUM_NODES}={count} must be at least 1")
        for name, value in ((NODE_INDEX, index), (MAIN_NODE_INDEX, main)):
            if not 0 <= value < count:
                problems.append(f"{name}={value} is not a node of a {count}-node job (0 to {count - 1})")
    if problems:
        raise BatchEnvironmentError("malformed AWS Batch multi-node environment: " + "; ".join(problems))
    if index == main:
        return NodeRole("main", index, count, main)
    raw = environ.get(MAIN_NODE_ADDRESS, "").strip()
    if not raw:
        raise BatchEnvironmentError(
            f"node {index} is a child node ({MAIN_NODE_INDEX}={main}) but {MAIN_NODE_ADDRESS} is not set, "
            "so it cannot find the main node's scheduler"
        )
    try:
        address = ipaddress.IPv4Address(raw)
    except ValueError:
        raise BatchEnvironmentError(f"{MAIN_NODE_ADDRESS}={raw!r} is not an IPv4 address") from None
    return NodeRole("child", index, count, main, str(address))


def _count(name: str, value: str, problems: list[str]) -> int:
    try:
        return int(value.strip(), 10)
    except ValueError:
        problems.append(f"{name}={value!r} is not a whole number")
        return -1


def join_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for the other nodes: ``BATCHNLP_NODE_JOIN_TIMEOUT``, else :data:`JOIN_TIMEOUT`.

    A malformed value is a :class:`BatchEnvironmentError` (exit 2): retrying cannot fix it.
    """
    raw = (os.environ if environ is None else environ).get(JOIN_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return JOIN_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise BatchEnvironmentError(
            f"{JOIN_TIMEOUT_VARIABLE}={raw!r} must be a positive number of seconds, e.g. {JOIN_TIMEOUT:.0f}"
        )
    return seconds


def main_node_reserve(environ: Mapping[str, str] | None = None) -> int:
    """Bytes of the main node's memory kept from its workers: ``BATCHNLP_MAIN_NODE_RESERVE_MIB`` MiB, else 0."""
    raw = (os.environ if environ is None else environ).get(MAIN_NODE_RESERVE_VARIABLE, "").strip()
    if not raw:
        return 0
    try:
        mib = int(raw, 10)
    except ValueError:
        mib = -1
    if mib < 0:
        raise BatchEnvironmentError(f"{MAIN_NODE_RESERVE_VARIABLE}={raw!r} must be a whole number of MiB, e.g. 2048")
    return mib * 2**20


# --- child node ---------------------------------------------------------------------------


def serve_child(
    role: NodeRole,
    device: str = "auto",
    workers: int | None = None,
    *,
    port: int = SCHEDULER_PORT,
    host: str | None = None,
    timeout: float | None = None,
) -> None:
    """Run this node's Dask workers for the main node's scheduler until that scheduler closes.

    Waits up to ``timeout`` seconds (default: :func:`join_timeout`) for the job's certificates
    and for the scheduler to answer, then raises :class:`JobFailed` naming what did not come.
    Workers listen on ``host``; by default on the interface that routes to the scheduler. When the
    scheduler closes (the job is over), the workers and their nannies close without an error in the log.
    """
    if role.kind != "child":
        raise ValueError(f"serve_child on a {role.kind} node")
    timeout = join_timeout() if timeout is None else timeout
    layout = node_layout(workers, device)
    address = role.scheduler_address(port)
    logger.info("%s: %d Dask workers will join the scheduler at %s", role.describe(), layout.workers, address)
    asyncio.run(_serve_child(role, layout, address, host, timeout))
    logger.info("%s: the scheduler at %s closed; the job is over", role.describe(), address)


async def _serve_child(role: NodeRole, layout: Layout, address: str, host: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    certificates = await asyncio.to_thread(cluster_secret.fetch, os.environ, deadline)
    security = certificates.security()
    await _wait_for_scheduler(address, deadline, security)
    nanny_class = _child_nanny_class()
    nannies = [
        nanny_class(
            address,
            host=host,
            death_timeout=max(1.0, deadline - time.monotonic()),
            security=security,
            **{**options, "preload": [*options["preload"], child_worker.__name__]},
        )
        for options in worker_options(role, layout).values()
    ]
    try:
        await asyncio.gather(*nannies)  # starts each nanny, which starts and registers its worker
    except Exception as e:
        await asyncio.gather(*(nanny.close() for nanny in nannies), return_exceptions=True)
        raise JobFailed(f"{role.describe()}: workers could not join the scheduler at {address}: {e}") from e
    # A worker closes with its nanny when the scheduler tells it to or its connection breaks;
    # a worker that dies on its own (out of memory) is restarted by its nanny, as locally.
    await asyncio.gather(*(nanny.finished() for nanny in nannies))


@functools.cache
def _child_nanny_class() -> type:
    """A :class:`distributed.Nanny` that stops its worker process itself when the worker closes.

    At the end of a job the scheduler tells each worker to close; the worker asks its nanny to
    ``close_gracefully`` (do not restart me), closes, and its process exits on its own. In
    distributed 2026.8 that process still has a thread blocked reading the nanny's stop queue,
    which the nanny only writes to when *it* stops the worker; torn down under that thread, the
    queue makes it log ``distributed.nanny - ERROR - Worker process died unexpectedly`` and a
    traceback (5 of 6 two-node test jobs on loopback). In CloudWatch every good night would look
    like a failure.

    Here the nanny answers ``close_gracefully`` by stopping the worker itself (what distributed's
    own comment in ``Worker.close`` asks for: the nanny owns the worker). The stop message is
    queued before the worker's request returns, so the thread reads it and ends while the
    worker closes; the nanny then closes when the process exits, as before. Only the worker
    calls ``close_gracefully`` on its nanny, and only when it closes for good, so nothing else
    changes: a worker that dies (out of memory) is still restarted.
    """
    from distributed import Nanny

    class ChildNanny(Nanny):
        _stopping: asyncio.Task[None] | None = None

        async def close_gracefully(self, reason: str = "nanny-close-gracefully") -> None:  # type: ignore[override]
            super().close_gracefully(reason=reason)
            if self.process is None or self._stopping is not None:
                return
            self._stopping = asyncio.ensure_future(self.kill(timeout=WORKER_STOP_TIMEOUT, reason=reason))
            # The kill task runs before this handler resumes (both are queued on the one loop, in
            # that order) and queues the stop message before its first await: the reply to the
            # worker leaves after the message.
            await asyncio.sleep(0)

    return ChildNanny


async def _wait_for_scheduler(address: str, deadline: float, security: Any) -> None:
    """Until the scheduler completes a Dask handshake; a refused connection is retried every 2 s."""
    from distributed.comm import connect

    started, reported = time.monotonic(), time.monotonic()
    tls = security.get_connection_args("worker")
    while True:
        try:
            comm = await connect(address, timeout=max(0.5, min(5.0, deadline - time.monotonic())), **tls)
        except (OSError, TimeoutError) as e:
            now = time.monotonic()
            if now >= deadline:
                raise JobFailed(
                    f"the main node's Dask scheduler at {address} did not answer within {now - started:.0f} s "
                    f"({type(e).__name__}: {e}); check the main node's log, and that the job's security group "
                    f"lets its nodes reach each other on port {address.rsplit(':', 1)[1]} and the workers' ports"
                ) from e
            if now - reported >= 30:
                logger.info("waiting for the scheduler at %s (%.0f s so far)", address, now - started)
                reported = now
            await asyncio.sleep(min(2.0, max(0.0, deadline - now)))
            continue
        await comm.close()
        return


# --- main node ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MainNode:
    """The cluster the main node started: the driver connects to ``address`` with ``certificates``."""

    address: str
    workers: int  # worker processes expected over all nodes (for unit sizing)
    certificates: JobCertificates


@contextmanager
def main_node(
    role: NodeRole,
    device: str = "auto",
    workers: int | None = None,
    *,
    host: str = "0.0.0.0",
    port: int = SCHEDULER_PORT,
    timeout: float | None = None,
) -> Iterator[MainNode]:
    """Start the job's scheduler and this node's workers; yield once every child node has joined.

    The scheduler listens on ``tls://host:port`` (every interface by default, so child nodes
    reach it at this node's private address) and allows ``ALLOWED_FAILURES`` worker deaths per
    unit, as the embedded cluster does. Waits up to ``timeout`` seconds (default:
    :func:`join_timeout`) for the child nodes. Leaving the block closes it, and so every node's
    workers, and deletes the job's secret.
    """
    from distributed import Client

    if role.kind != "main":
        raise ValueError(f"main_node on a {role.kind} node")
    timeout = join_timeout() if timeout is None else timeout
    reserve = main_node_reserve()
    layout = node_layout(workers, device)
    certificates = issue(cluster_secret.job_id(os.environ))
    with cluster_secret.published(certificates, os.environ):  # deleted as the block ends, failed or not
        options = worker_options(role, layout, reserve=reserve)
        cluster = start_local_cluster(layout, options, host, port, certificates.security())
        try:
            address = cluster.scheduler_address
            logger.info(
                "%s: Dask scheduler at %s with %d local workers; waiting for nodes %s",
                role.describe(),
                address,
                layout.workers,
                ", ".join(map(str, role.child_nodes)) or "(none)",
            )
            with Client(cluster) as client:
                _wait_for_nodes(client, role, layout.workers, time.monotonic() + timeout)
            yield MainNode(address, layout.workers * role.num_nodes, certificates)
        finally:
            cluster.close()


def _wait_for_nodes(client: Any, role: NodeRole, local_workers: int, deadline: float) -> None:
    """Until this node's workers and at least one worker of every child node are registered."""
    started = time.monotonic()
    while True:
        names = [str(w.get("name")) for w in client.scheduler_info(n_workers=-1)["workers"].values()]
        nodes: dict[int, int] = {}
        for name in names:
            if match := WORKER_NAME.fullmatch(name):
                nodes[int(match.group(1))] = nodes.get(int(match.group(1)), 0) + 1
        joined = [i for i in role.child_nodes if i in nodes]
        local = nodes.get(role.node_index, 0)
        if local >= local_workers and len(joined) == len(role.child_nodes):
            logger.info(
                "%s: %d workers on %d nodes joined in %.1f s",
                role.describe(),
                len(names),
                len(nodes),
                time.monotonic() - started,
            )
            return
        if time.monotonic() >= deadline:
            missing = [i for i in role.child_nodes if i not in nodes]
            raise JobFailed(
                f"after {time.monotonic() - started:.0f} s, workers of {len(joined)} of {len(role.child_nodes)} "
                f"child nodes had joined the scheduler (joined: {', '.join(map(str, joined)) or 'none'}; missing: "
                f"{', '.join(map(str, missing)) or 'none'}), and {local} of this node's {local_workers} workers; "
                f"see the missing nodes' logs (job id#node) and check that the job's security group lets its "
                f"nodes reach each other"
            )
        time.sleep(0.5)


# --- both -----------------------------------------------------------------------------------


def node_layout(workers: int | None, device: str, **machine: Any) -> Layout:
    """This node's workers, as the embedded cluster lays them out, but at most one per port of
    :data:`WORKER_PORTS`: a larger node (96 cores) runs :data:`MAX_WORKERS_PER_NODE` single-threaded
    workers with more torch threads each; ``--workers`` above that is an error (exit 2).
    ``machine``: :func:`local_layout`'s ``cores`` and ``memory``, where not this machine's."""
    layout = local_layout(workers, device, **machine)
    if layout.workers <= MAX_WORKERS_PER_NODE:
        return layout
    if workers:
        raise BatchEnvironmentError(
            f"--workers {workers}: a node of a multi-node job runs at most {MAX_WORKERS_PER_NODE} worker processes "
            f"(one per port of {WORKER_PORTS}, which the job's security group opens); give {MAX_WORKERS_PER_NODE} "
            "or fewer"
        )
    return local_layout(MAX_WORKERS_PER_NODE, device, **machine)


def worker_options(role: NodeRole, layout: Layout, *, reserve: int = 0) -> dict[str, dict[str, Any]]:
    """Nanny options of this node's workers, by name: pinned GPU, torch threads, log redaction, ports.

    ``OMP_NUM_THREADS`` gives each process its share of the cores, which the driver cannot
    set on a cluster it did not start; the preload makes worker processes redact their logs.
    The workers share the node's memory less ``reserve`` bytes (on the main node: the
    scheduler's and the driver's room), so every worker of the job gets the same limit; they
    keep at least a quarter of it whatever the reserve.
    """
    from distributed.system import MEMORY_LIMIT

    preload = dask_preload()
    share = max(MEMORY_LIMIT - reserve, MEMORY_LIMIT // 4) // layout.workers
    options = {}
    for number in range(layout.workers):
        env = {"OMP_NUM_THREADS": str(layout.torch_threads)}
        if layout.gpus:
            env["CUDA_VISIBLE_DEVICES"] = layout.gpus[number]
        options[role.worker_name(number)] = {
            "name": role.worker_name(number),
            "nthreads": layout.threads,
            "env": env,
            "preload": preload,
            "memory_limit": share,
            "port": NANNY_PORTS,
            "worker_port": WORKER_PORTS,
            "dashboard_address": "127.0.0.1:0",  # its HTTP server (health, metrics): never for other nodes
        }
    return options


def dask_preload() -> list[str]:
    """The worker preload list of this process's Dask config, with batchnlp's redaction in it."""
    import dask.config

    preload = dask.config.get(redaction.PRELOAD, None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    return preload if redaction.__name__ in preload else [*preload, redaction.__name__]


@contextmanager
def multinode_job(spec: JobSpec, role: NodeRole, **main_options: Any) -> Iterator[JobSpec]:
    """The CLI's hook around a run: ``spec`` unchanged on a single node; on an MNP main node,
    ``spec`` pointed at the job's own scheduler (with every node's workers joined) while it runs.
    Credential storage options are refused: the child nodes' workers use their own role."""
    if role.kind == "single":
        yield spec
        return
    if role.kind != "main":
        raise ValueError("a child node serves workers (serve_child); it runs no job")
    if spec.scheduler:
        raise SpecError(
            f"--scheduler {spec.scheduler} cannot be used in a multi-node AWS Batch job: the main node "
            "starts the job's scheduler itself; drop the option (or run a single-node job)"
        )
    refuse_remote(spec.storage_options, "the nodes of a multi-node AWS Batch job")
    # The driver's client presents the job's certificate through Dask's own TLS settings, as for any
    # tls:// address without --tls-* files: never in the spec, which the manifest records.
    with main_node(role, spec.device, spec.workers, **main_options) as cluster, tls_settings(cluster):
        yield dataclasses.replace(spec, scheduler=cluster.address, workers=cluster.workers)


@contextmanager
def tls_settings(cluster: MainNode) -> Iterator[None]:
    """Dask's TLS settings in this process set to the job's certificates while the block runs."""
    import dask

    with dask.config.set(cluster.certificates.dask_config()):
        yield
