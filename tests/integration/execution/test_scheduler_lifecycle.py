"""How a scheduler really stops and retries a job, with real processes: another host's next attempt, SIGTERM,
a duplicate delivery, bad lines within a budget, a hung unit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest

from batchnlp.ledger.lock import LOCK, Owner, owner_from
from tests.support.helpers import invoke, upload_dir, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

ROWS = 2400


@pytest.fixture
def slow_job(tmp_path, tiny_model, request):
    """Arguments of a run slow enough to interrupt: 24 units of 100 rows, one row per model batch, on
    torch (ONNX Runtime runs the tiny model's batches of one row so fast that 12,000 rows end in 5 s)."""
    rows = [{"id": i, "text": f"review number {i} of the night"} for i in range(getattr(request, "param", ROWS))]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    args = [str(source), str(out), "--model", f"sentiment={tiny_model}", "--rows-per-partition", "100"]
    return out, [*args, "--workers", "1", "--tokens-per-batch", "8", "--backend", "torch"]


def start(args: list[str], env: dict[str, str] | None = None, host: str | None = None) -> subprocess.Popen:
    """`batchnlp run ARGS` in a new process group; under another host name with ``host`` (a UTS namespace)."""
    command = [sys.executable, "-m", "batchnlp", "run", *args]
    if host is not None:
        command = ["unshare", "--uts", "--fork", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    return subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_parts(out: Path, run: subprocess.Popen, count: int) -> None:
    deadline = time.time() + 180
    while len(list((out / "_progress").glob("part-*.json"))) < count:
        assert run.poll() is None, f"the run ended before it could be interrupted:\n{run.communicate()[0]}"
        assert time.time() < deadline, "no progress records"
        time.sleep(0.02)


def ids(out: Path) -> list[int]:
    return sorted(ds.dataset(str(out), format="parquet").to_table().column("id").to_pylist())


def batch_env(attempt: int, job: str = "a1b2c3d4-job") -> dict[str, str]:
    return {"AWS_BATCH_JOB_ID": job, "AWS_BATCH_JOB_ATTEMPT": str(attempt)}


def test_owner_comes_from_the_scheduler():
    assert owner_from({}) is None
    assert owner_from(batch_env(2)) == Owner(scheduler="aws-batch", job="a1b2c3d4-job", attempt="2")
    k8s = {"BATCHNLP_K8S_JOB_UID": "5f0c-uid", "BATCHNLP_K8S_POD": "nightly-29412-x7k2p"}
    assert owner_from(k8s) == Owner(scheduler="kubernetes", job="5f0c-uid", attempt="nightly-29412-x7k2p")
    assert owner_from(batch_env(1), lock_owner="airflow:labels:2026-11-24").job == "airflow:labels:2026-11-24"
    first, second = (
        Owner(scheduler="aws-batch", job="j", attempt="1"),
        Owner(scheduler="aws-batch", job="j", attempt="2"),
    )
    assert second.succeeds(first) and not second.succeeds(second)
    assert not Owner(scheduler="aws-batch", job="other", attempt="2").succeeds(first)


def test_a_retry_on_another_host_takes_over_at_once_and_finishes_exactly_once(slow_job):
    """Spot reclaims host-a mid-run (SIGKILL of everything); Batch starts attempt 2 on host-b seconds later."""
    out, args = slow_job
    first = start([*args, "--resume"], batch_env(1), host="host-a")
    wait_for_parts(out, first, 3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    lock = json.loads((out / LOCK).read_text())
    assert lock["host"] == "host-a"
    assert lock["owner"] == {"scheduler": "aws-batch", "job": "a1b2c3d4-job", "attempt": "1"}

    second = start([*args, "--resume"], batch_env(2), host="host-b")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert "attempt 2 of AWS Batch job a1b2c3d4-job takes over from attempt 1" in output
    assert "parts kept from the interrupted run" in output
    assert ids(out) == list(range(ROWS)), "every row exactly once"
    assert not (out / LOCK).exists()


def test_sigterm_drains_releases_the_lock_stops_every_worker_and_a_rerun_keeps_the_parts(slow_job):
    out, args = slow_job
    run = start([*args, "--grace-seconds", "10"])
    wait_for_parts(out, run, 2)
    workers = psutil.Process(run.pid).children(recursive=True)
    assert workers, "the embedded cluster's processes"
    run.send_signal(signal.SIGTERM)  # to the driver alone, as tini forwards it
    sent = time.monotonic()
    output, _ = run.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert run.returncode == 143, output
    assert stopped_after < 30, f"ECS would have killed it: {stopped_after:.1f} s"
    assert "SIGTERM received: no new units start" in output and "run stopped, SIGTERM received" in output
    assert "Traceback" not in output
    assert not (out / LOCK).exists(), "the lock goes with the run"
    assert not (out / "_SUCCESS").exists()
    psutil.wait_procs(workers, timeout=10)
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "no worker outlives it"
    recorded = len(list((out / "_progress").glob("part-*.json")))

    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"{recorded} parts kept from the interrupted run" in resumed.output
    assert ids(out) == list(range(ROWS))


class FakeInstanceMetadata:
    """EC2's instance metadata on loopback: IMDSv2 tokens, and a Spot notice once :meth:`announce` is called."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.notice: bytes | None = None
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                token = self.path == "/latest/api/token"
                self._answer(200 if token else 404, b"token-123" if token else b"")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
                    self._answer(401, b"")
                elif self.path == "/latest/meta-data/spot/instance-action" and metadata.notice:
                    self._answer(200, metadata.notice)
                else:
                    self._answer(404, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def announce(self, seconds: float) -> None:
        from datetime import datetime, timedelta, timezone

        when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        self.notice = json.dumps({"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()


@pytest.mark.parametrize("slow_job", [12000], indirect=True)  # the notice is polled every 5 s
def test_a_spot_interruption_notice_drains_before_the_sigterm(slow_job):
    metadata = FakeInstanceMetadata()
    out, args = slow_job
    env = {**batch_env(1), "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.endpoint}
    run = start([*args, "--resume"], env)
    wait_for_parts(out, run, 2)
    metadata.announce(120)
    output, _ = run.communicate(timeout=120)
    metadata.server.shutdown()
    assert run.returncode == 143, output
    assert "Spot interruption notice received (terminate at" in output
    assert "every running unit finished and was recorded" in output
    assert not (out / LOCK).exists() and not (out / "_SUCCESS").exists()


def test_sigterm_before_any_unit_runs_exits_143_without_a_lock(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"row {i}"} for i in range(20)])
    out = tmp_path / "out"
    run = start([str(source), str(out), "--model", f"sentiment={tiny_model}", "--workers", "1", "--log-format", "json"])
    deadline = time.time() + 60
    while not (out / LOCK).exists():  # the lock is taken just before the cluster starts
        assert run.poll() is None and time.time() < deadline, run.communicate()[0]
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 143, output
    assert "run stopped, SIGTERM received" in output and "Traceback" not in output
    assert not (out / LOCK).exists()
    metrics = json.loads(output.strip().splitlines()[-1])  # the night-not-committed alarm's data point
    assert (metrics["Committed"], metrics["exit_code"]) == (0, 143)


def test_a_duplicate_delivery_of_the_same_job_writes_nothing_and_exits_0(slow_job):
    """EventBridge delivers the night twice: two Batch jobs, one spec. The second leaves the night to the first."""
    out, args = slow_job
    first = start([*args, "--resume"], batch_env(1, job="job-one"))
    wait_for_parts(out, first, 1)
    duplicate = start([*args, "--resume"], batch_env(1, job="job-two"))
    output, _ = duplicate.communicate(timeout=120)
    assert duplicate.returncode == 0, output
    assert "attempt 1 of AWS Batch job job-one" in output and "leaves it to that one" in output
    assert json.loads((out / LOCK).read_text())["owner"]["job"] == "job-one", "the duplicate took nothing"

    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert "parts kept" not in output, "the first run was never disturbed"
    assert ids(out) == list(range(ROWS))


def test_a_different_job_on_a_live_output_is_still_refused(slow_job, tiny_model):
    out, args = slow_job
    first = start([*args, "--resume"], batch_env(1, job="job-one"))
    wait_for_parts(out, first, 1)
    other = start([*args, "--resume", "--text-column", "id"], batch_env(1, job="job-two"))
    output, _ = other.communicate(timeout=120)
    first.kill()
    first.wait()
    assert other.returncode == 2, output
    assert "is being written by run" in output and "job-one" in output


@pytest.fixture
def dirty_input(tmp_path):
    lines = [json.dumps({"id": i, "text": f"line {i}"}) for i in range(300)]
    for at in (50, 150, 250):
        lines[at] = '{"id": broken'
    path = tmp_path / "dirty.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_quarantined_lines_within_the_budget_exit_0(job, tmp_path, dirty_input):
    result = job(dirty_input, tmp_path / "out", "--on-bad-lines", "quarantine", "--rows-per-partition", "100")
    assert result.exit_code == 0, result.output
    assert "3 input lines that were not JSON objects under _rejected/" in result.output
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]["bad_lines"] == 3


def test_too_many_bad_lines_commit_nothing_exit_3_and_resume_with_a_higher_limit(job, tmp_path, dirty_input):
    out = tmp_path / "out"
    flags = ("--on-bad-lines", "skip", "--rows-per-partition", "100")
    over = job(dirty_input, out, *flags, "--max-bad-lines", "1")
    assert over.exit_code == 3, over.output
    assert "more than --max-bad-lines allows (1); nothing was committed" in over.output
    assert "dirty.jsonl:" in over.output and not (out / "_SUCCESS").exists()

    fraction = job(dirty_input, out, *flags, "--max-bad-lines", "0.5%", "--resume")
    assert fraction.exit_code == 3, fraction.output
    assert "3 input lines were not JSON objects, more than --max-bad-lines allows (0.5% of 300" in fraction.output

    within = job(dirty_input, out, *flags, "--max-bad-lines", "1%", "--resume")
    assert within.exit_code == 0, within.output
    assert "parts kept from the interrupted run" in within.output
    assert (out / "_SUCCESS").exists()


def test_a_hung_unit_is_detected_and_rerun_on_a_restarted_worker(
    tmp_path, s3, bucket, tiny_model, s3_proxy, monkeypatch
):
    """A read that never answers (the proxy holds it; a user's long read timeout keeps botocore waiting)."""
    import pyarrow as pa

    from batchnlp.execution import runner

    # The report's estimate reads sample units on the driver at the same time as the workers: it
    # would take the one delayed answer meant for a worker's read (and wait 30 s for it at the end).
    monkeypatch.setattr(runner, "_estimate", lambda spec, job_plan: {})
    import pyarrow.parquet as pq

    local = tmp_path / "in"
    local.mkdir()
    for n in range(3):
        rows = [{"id": n * 100 + i, "text": f"file {n} row {i}"} for i in range(100)]
        pq.write_table(pa.Table.from_pylist(rows), local / f"in-{n}.parquet")
    source = upload_dir(s3, local, bucket, "in")
    out = tmp_path / "out"

    def arm_once_planned() -> None:  # planning reads every footer first: hang the first read of a unit
        deadline = time.time() + 120
        while not (out / "_progress" / "_job.json").exists() and time.time() < deadline:
            time.sleep(0.01)
        s3_proxy.inject("delay", "GET", "in-1.parquet", times=1, seconds=90)

    spec = tmp_path / "patient.yaml"  # botocore would wait 5 minutes for the held answer
    spec.write_text("storage_options: {config_kwargs: {read_timeout: 300}}\n")
    arming = threading.Thread(target=arm_once_planned, daemon=True)
    arming.start()
    result = invoke(
        "--spec", spec, source, out, "--model", f"sentiment={tiny_model}", "--workers", "2", "--unit-timeout", "3",
        "--log-format", "json",
    )  # fmt: skip
    arming.join()
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    stalled = [e for e in events if e.get("event") == "unit_stalled"]
    assert stalled and "in-1.parquet" in stalled[0]["message"], result.output
    assert any(e.get("event") == "no_progress" for e in events), "the whole job stood still meanwhile"
    assert s3_proxy.faults("delay") == 1
    assert ids(out) == list(range(300))


def test_rerunning_a_committed_job_exits_0_and_a_changed_one_is_refused(job, tmp_path):
    """A retry of a job whose process died after its commit (no --resume, no --run-id) must not fail the night."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"row {i}"} for i in range(50)])
    out = tmp_path / "out"
    assert job(source, out).exit_code == 0
    committed = (out / "_SUCCESS").read_bytes()
    again = job(source, out)
    assert again.exit_code == 0 and "is already complete" in again.output, again.output
    assert (out / "_SUCCESS").read_bytes() == committed
    with source.open("a") as f:
        f.write('{"id": 50, "text": "a late row"}\n')
    changed = job(source, out)
    assert changed.exit_code == 2 and "already holds a finished run" in changed.output
