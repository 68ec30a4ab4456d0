"""Who can reach a job's cluster: the embedded cluster listens on loopback only. Real clusters, real jobs."""

from __future__ import annotations

from pathlib import Path

import psutil

from batchnlp.cluster import Layout, start_local_cluster
from batchnlp.runner import run
from batchnlp.spec import JobSpec
from tests.helpers import write_jsonl


def listening(processes: list[psutil.Process]) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket these processes listen on."""
    found = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def process_tree() -> list[psutil.Process]:
    """This process and all it started: the embedded cluster's nannies, fork server and workers."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def assert_loopback_only(sockets: set[tuple[str, int]]) -> None:
    assert sockets, "the cluster listens somewhere"
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sorted(sockets)


def job_settings(tmp_path: Path, model: Path, rows: int = 40) -> dict:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review {i} was fine"} for i in range(rows)])
    return {
        "input": str(source),
        "output": str(tmp_path / "out"),
        "models": {"sentiment": str(model)},
        "device": "cpu",
        "workers": 2,
        "rows_per_partition": 10,
    }


def test_a_run_on_the_embedded_cluster_listens_on_loopback_only(tmp_path, tiny_model):
    """Scheduler, nannies, forked workers and the HTTP server (health, metrics) of a real run: none on
    0.0.0.0 or ::, where anyone on the network could send the scheduler a function to run."""
    before = listening(process_tree())
    during: set[tuple[str, int]] = set()

    def on_part(result) -> None:
        if not during:
            during.update(listening(process_tree()) - before)

    summary = run(JobSpec.from_settings(job_settings(tmp_path, tiny_model)), on_part=on_part)
    assert summary.totals.rows_out == 40
    assert_loopback_only(during)
    assert len(during) >= 6, f"scheduler, HTTP server, two nannies, two workers: {sorted(during)}"


def test_gpu_layout_workers_listen_on_loopback_only():
    """GPU workers are spawned, not forked; they and their nannies bind where the CPU ones do."""
    from distributed import Client

    before = listening(process_tree())
    cluster = start_local_cluster(Layout(2, 2, 1, ("0", "1")))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            during = listening(process_tree()) - before
    finally:
        cluster.close()
    assert_loopback_only(during)
    assert len(during) >= 6, sorted(during)
