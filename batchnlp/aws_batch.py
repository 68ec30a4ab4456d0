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

The main node starts a Dask scheduler on port 8786 of every interface and its own workers,
waits until workers of every child node have joined, then runs the job as with
``--scheduler``; closing the scheduler at the end makes every child's workers exit. A child
node runs only workers (laid out as the embedded cluster's: one process per core on CPU,
``WORKERS_PER_GPU`` per GPU, each pinned to its GPU) that join the main node's scheduler, and
exits 0 when that scheduler goes away. AWS Batch judges the job by the main node's exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from batchnlp import redaction
from batchnlp.cluster import ALLOWED_FAILURES, Layout, local_layout
from batchnlp.errors import JobFailed, SpecError

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

logger = logging.getLogger(__name__)

NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
SCHEDULER_PORT = 8786  # Dask's default, and the port the job's security group opens between nodes
# How long the main node waits for every child node's workers, and a child for the scheduler.
# AWS Batch starts child nodes after the main node, each pulling the image first.
JOIN_TIMEOUT = 600.0
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
        return f"tcp://{self.main_ip}:{port}"

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


# --- child node ---------------------------------------------------------------------------


def serve_child(
    role: NodeRole,
    device: str = "auto",
    workers: int | None = None,
    *,
    port: int = SCHEDULER_PORT,
    host: str | None = None,
    timeout: float = JOIN_TIMEOUT,
) -> None:
    """Run this node's Dask workers for the main node's scheduler until that scheduler closes.

    Waits up to ``timeout`` seconds for the scheduler to answer (the main node may still be
    pulling the image), then raises :class:`JobFailed` naming the address. Workers listen on
    ``host``; by default on the interface that routes to the scheduler.
    """
    if role.kind != "child":
        raise ValueError(f"serve_child on a {role.kind} node")
    layout = local_layout(workers, device)
    address = role.scheduler_address(port)
    logger.info("%s: %d Dask workers will join the scheduler at %s", role.describe(), layout.workers, address)
    asyncio.run(_serve_child(role, layout, address, host, timeout))
    logger.info("%s: the scheduler at %s closed; the job is over", role.describe(), address)


async def _serve_child(role: NodeRole, layout: Layout, address: str, host: str | None, timeout: float) -> None:
    from distributed import Nanny

    deadline = time.monotonic() + timeout
    await _wait_for_scheduler(address, deadline)
    nannies = [
        Nanny(address, host=host, death_timeout=max(1.0, deadline - time.monotonic()), **options)
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


async def _wait_for_scheduler(address: str, deadline: float) -> None:
    """Until the scheduler completes a Dask handshake; a refused connection is retried every 2 s."""
    from distributed.comm import connect

    started, reported = time.monotonic(), time.monotonic()
    while True:
        try:
            comm = await connect(address, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
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
    """The cluster the main node started: the driver connects to ``address``."""

    address: str
    workers: int  # worker processes expected over all nodes (for unit sizing)


@contextmanager
def main_node(
    role: NodeRole,
    device: str = "auto",
    workers: int | None = None,
    *,
    host: str = "0.0.0.0",
    port: int = SCHEDULER_PORT,
    timeout: float = JOIN_TIMEOUT,
) -> Iterator[MainNode]:
    """Start the job's scheduler and this node's workers; yield once every child node has joined.

    The scheduler listens on ``host:port`` (every interface by default, so child nodes reach
    it at this node's private address) and allows ``ALLOWED_FAILURES`` worker deaths per unit,
    as the embedded cluster does. Leaving the block closes it, and so every node's workers.
    """
    import dask
    from distributed import Client, LocalCluster

    if role.kind != "main":
        raise ValueError(f"main_node on a {role.kind} node")
    layout = local_layout(workers, device)
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(
            host=host,
            scheduler_port=port,
            n_workers=0,
            threads_per_worker=layout.threads,
            processes=True,
            dashboard_address=f"{host}:0",  # distributed always serves HTTP (health, metrics)
            silence_logs=logging.WARNING,
        )
    try:
        for name, options in worker_options(role, layout).items():
            cluster.worker_spec[name] = {**cluster.new_spec, "options": {**cluster.new_spec["options"], **options}}
        cluster.sync(cluster._correct_state)
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
        yield MainNode(address, layout.workers * role.num_nodes)
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


def worker_options(role: NodeRole, layout: Layout) -> dict[str, dict[str, Any]]:
    """Nanny options of this node's workers, by name: pinned GPU, torch threads, log redaction.

    ``OMP_NUM_THREADS`` gives each process its share of the cores, which the driver cannot
    set on a cluster it did not start; the preload makes worker processes redact their logs.
    """
    from distributed.system import MEMORY_LIMIT

    preload = dask_preload()
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
            "memory_limit": MEMORY_LIMIT // layout.workers,
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
    ``spec`` pointed at the job's own scheduler (with every node's workers joined) while it runs."""
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
    with main_node(role, spec.device, spec.workers, **main_options) as cluster:
        yield dataclasses.replace(spec, scheduler=cluster.address, workers=cluster.workers)
