"""Concurrent runs on one OUTPUT: the second is refused while the first lives; a dead owner's lock is broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from batchnlp.errors import JobFailed, OutputError
from batchnlp.io.storage import Location
from batchnlp.ledger.lease_store import Version
from batchnlp.ledger.lock import LOCK, OutputLock, stale
from tests.support.helpers import invoke, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves


@pytest.fixture
def source(tmp_path):
    return write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review number {i}"} for i in range(40)])


def write_lock(out, **fields):
    out.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
    (out / LOCK).write_text(json.dumps({**record, "renewed_at": time.time(), **fields}))


def test_a_second_run_is_refused_while_the_first_is_writing(tmp_path, source, tiny_model):
    """Two real processes: the first holds the lock while it works, the second is turned away."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "batchnlp", "run", str(source), str(out), "--model", f"sentiment={tiny_model}"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (out / LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (out / LOCK).exists(), "the first run never took the lock"
    holder = json.loads((out / LOCK).read_text())

    second = invoke(source, out, "--model", f"sentiment={tiny_model}", "--overwrite")
    assert second.exit_code == 2
    assert f"is being written by run {holder['run_id']}" in second.output and "--break-lock" in second.output

    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output
    assert (out / "_SUCCESS").exists() and not (out / LOCK).exists(), "the lock goes when the run ends"
    assert json.loads((out / "_SUCCESS").read_text())["run_id"] == holder["run_id"]


def test_a_lock_whose_process_is_gone_is_broken_and_the_run_goes_on(tmp_path, source, tiny_model):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path / "out", pid=dead.pid)
    result = invoke(source, tmp_path / "out", "--model", f"sentiment={tiny_model}")
    assert result.exit_code == 0, result.output
    assert "breaking the lock of run other-run" in result.output and "is gone" in result.output
    assert not (tmp_path / "out" / LOCK).exists()


def test_break_lock_takes_a_live_runs_output(tmp_path, source, tiny_model):
    write_lock(tmp_path / "out")  # this test process: alive
    refused = invoke(source, tmp_path / "out", "--model", f"sentiment={tiny_model}")
    assert refused.exit_code == 2 and "other-run" in refused.output
    taken = invoke(source, tmp_path / "out", "--model", f"sentiment={tiny_model}", "--break-lock")
    assert taken.exit_code == 0, taken.output
    assert "(--break-lock)" in taken.output


def test_staleness():
    here = socket.gethostname()

    def lock(age: float, **fields) -> Version:
        record = {"run_id": "other-run", "host": "elsewhere", "pid": 1, "renewed_at": time.time(), **fields}
        return Version(data=json.dumps(record).encode(), etag="etag", age=age)

    assert stale(lock(0, host=here, pid=os.getpid())) is None
    assert stale(lock(60)) is None, "renewed a minute ago"
    assert "not renewed for 900 s" in stale(lock(900))


def test_the_lock_is_renewed_while_held_and_released_on_failure(tmp_path):
    output = Location(str(tmp_path), {})
    with pytest.raises(RuntimeError, match="boom"), OutputLock(output, "run-a", renew=0.05):
        first = json.loads((tmp_path / LOCK).read_text())["renewed_at"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LOCK).read_text())["renewed_at"] > first
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()


def test_an_interrupt_while_taking_the_lock_leaves_none_behind(tmp_path):
    """A SIGTERM's exception landing after the lock file was created but before ``with`` holds it
    (so ``__exit__`` never runs) still removes the lock: the scheduler's next attempt finds none."""
    lock = OutputLock(Location(str(tmp_path), {}), "run-a")

    def interrupted() -> None:
        assert (tmp_path / LOCK).exists()
        raise KeyboardInterrupt

    lock.renewer.start = interrupted
    with pytest.raises(KeyboardInterrupt), lock:
        pass
    assert not (tmp_path / LOCK).exists()


def test_a_refused_run_leaves_the_holders_lock_even_with_the_same_run_id(tmp_path):
    write_lock(tmp_path, run_id="run-a")  # alive: this very process, from an earlier lock
    held = (tmp_path / LOCK).read_text()
    with (
        pytest.raises(OutputError, match="is being written by run run-a"),
        OutputLock(Location(str(tmp_path), {}), "run-a"),
    ):
        pass
    assert (tmp_path / LOCK).read_text() == held


def test_s3_lock_is_create_only(bucket):
    output = Location(f"s3://{bucket}/out/", {})
    with OutputLock(output, "run-a"):
        with pytest.raises(OutputError, match="is being written by run run-a"), OutputLock(output, "run-b"):
            pass
        assert json.loads(output.split()[0].cat_file(output.child(LOCK)))["run_id"] == "run-a"
    with OutputLock(output, "run-b"):
        pass


def test_a_killed_driver_is_resumed_and_its_lock_broken(tmp_path, tiny_model):
    """SIGKILL the whole run (driver and workers, as a lost node) mid-job, then --resume it."""
    import signal

    import pyarrow.dataset as ds

    rows = [{"id": i, "text": f"review number {i}"} for i in range(3000)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    args = [str(source), str(out), "--model", f"sentiment={tiny_model}", "--rows-per-partition", "100"]
    # one row a batch, on torch (ONNX Runtime runs such batches far faster): slow enough to kill mid-job
    args += ["--workers", "1", "--tokens-per-batch", "8", "--backend", "torch"]
    run = subprocess.Popen([sys.executable, "-m", "batchnlp", "run", *args], start_new_session=True)
    deadline = time.time() + 120
    while len(list((out / "_progress").glob("part-*.json"))) < 3 and time.time() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (out / "_SUCCESS").exists() and (out / LOCK).exists(), "killed mid-job, holding its lock"

    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "breaking the lock" in resumed.output and "parts kept from the interrupted run" in resumed.output
    table = ds.dataset(str(out), format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == list(range(3000)), "every row exactly once"


# --- the lease: compare-and-swap on S3 (moto's server over HTTP) and on local disk --------------


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def lock_root(request, tmp_path) -> Location:
    """Where the lock lives: a local directory, or a prefix of a bucket on moto's server."""
    if request.param == "local":
        return Location(str(tmp_path / "out"), {})
    return Location(f"s3://{request.getfixturevalue('bucket')}/out/", {})


def plant_lock(root: Location, **fields) -> None:
    """Another driver's lock record, written as it would be (a dead one's, by default)."""
    record = {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
    if root.is_local:
        os.makedirs(root.path, exist_ok=True)
    root.fs.pipe_file(root.child(LOCK), json.dumps({**record, "renewed_at": time.time(), **fields}).encode())


def held_by(root: Location) -> str:
    return json.loads(root.fs.cat_file(root.child(LOCK)))["run_id"]


def break_at_once(root: Location, run_ids: list[str]) -> tuple[list[OutputLock], list[str]]:
    """Drivers (threads) that ask for the lock at the same moment: those that hold it, and the refusals."""
    start = threading.Barrier(len(run_ids))
    held: list[OutputLock] = []
    refused: list[str] = []

    def driver(run_id: str) -> None:
        lock = OutputLock(root, run_id)
        start.wait()
        try:
            lock.acquire()
        except OutputError as e:
            refused.append(str(e))
            return
        held.append(lock)

    drivers = [threading.Thread(target=driver, args=(run_id,)) for run_id in run_ids]
    for thread in drivers:
        thread.start()
    for thread in drivers:
        thread.join()
    return held, refused


def test_two_drivers_breaking_one_stale_lock_never_both_hold_it(lock_root, request):
    """20 times: a dead driver's lock, two drivers breaking it at the same moment; exactly one holds it.
    On S3 one driver's read of the stale lock comes back late (a slow network), as races do."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for trial in range(20):
        plant_lock(lock_root, pid=dead.pid)  # stale: its process on this host is gone
        if not lock_root.is_local:
            request.getfixturevalue("s3_proxy").inject("delay", "GET", r"/out/_lock\.json", after=2, seconds=0.5)
        held, refused = break_at_once(lock_root, ["driver-1", "driver-2"])
        assert len(held) == 1, f"trial {trial}: {len(held)} drivers hold the lock"
        assert len(refused) == 1 and "is being written by run" in refused[0], refused
        assert held_by(lock_root) == held[0].run_id
        held[0].release()


class SkewedClock:
    """The holder's ``time`` module, ``seconds`` off: what a host whose clock runs fast or slow writes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() + self.seconds

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.parametrize("skew", [600, -600], ids=["fast", "slow"])
def test_a_holders_clock_neither_keeps_nor_loses_its_lock(lock_root, skew, monkeypatch):
    """The store's clock decides: fresh while renewed, stale once not, whatever the holder's clock says."""
    import batchnlp.ledger.lock

    with monkeypatch.context() as holders_host:
        holders_host.setattr(batchnlp.ledger.lock, "time", SkewedClock(skew))
        holder = OutputLock(lock_root, "holder", renew=3600, stale_after=2)
        holder.acquire()  # and then it stops renewing: it died
    with pytest.raises(OutputError, match="is being written by run holder"):
        OutputLock(lock_root, "other", stale_after=2).acquire()
    time.sleep(4)
    other = OutputLock(lock_root, "other", stale_after=2)
    other.acquire()
    assert held_by(lock_root) == "other"
    other.release()


def test_a_holder_unrenewed_past_the_stale_time_refuses_to_commit(lock_root, request, monkeypatch):
    """S3: every renewal fails (the store unreachable through the fault proxy) for longer than the
    stale time; local disk: no renewal comes for that long. Either way the holder will not commit."""
    s3 = not lock_root.is_local
    if s3:
        proxy = request.getfixturevalue("s3_proxy")
        monkeypatch.setenv("BATCHNLP_S3_RETRY_SECONDS", "0.2")
    with OutputLock(lock_root, "run-a", renew=0.2 if s3 else 3600, stale_after=2) as lock:
        if s3:
            proxy.inject("reset", "*", "/out/_lock.json", times=100_000)
        time.sleep(3)
        if s3:
            assert proxy.faults("reset") > 2, "renewals were tried, and failed"
            proxy.clear()
        with pytest.raises(JobFailed, match=r"lost its lock on .*: no renewal succeeded for \d+ s"):
            lock.check_held()
    assert held_by(lock_root) == "run-a", "a lock it no longer trusts is left for the stale rule to break"


def test_a_run_whose_lock_was_taken_commits_nothing(tmp_path, source, tiny_model):
    """Another driver takes the lock mid-run (it judged it stale): the run ends with exit 1 and no commit."""
    from batchnlp.execution.runner import run
    from batchnlp.spec import JobSpec

    out = tmp_path / "out"
    settings = {"input": str(source), "output": str(out), "models": {"sentiment": str(tiny_model)}, "workers": 1}
    taker = {"run_id": "taker", "host": "elsewhere", "pid": 1, "started_at": time.time(), "renewed_at": time.time()}

    def take(part) -> None:
        (out / LOCK).write_text(json.dumps(taker))

    with pytest.raises(JobFailed, match=r"lost its lock on .*: run taker took it") as refused:
        run(JobSpec.from_settings(settings), on_part=take)
    assert refused.value.exit_code == 1
    assert not (out / "_SUCCESS").exists() and not (out / "_manifest.json").exists()
    assert held_by(Location(str(out), {})) == "taker", "the taker's lock is left alone"


def test_a_renewal_whose_answer_was_lost_still_holds_the_lock(bucket, s3_proxy):
    """S3 wrote the renewal but its answer came after the client's read timeout; botocore sent the PUT
    again, and S3 refused the repeat (its If-Match names the version the first attempt replaced).
    The lock holds this run's bytes: it is still this run's, and the run commits."""
    options = {"config_kwargs": {"read_timeout": 1, "retries": {"total_max_attempts": 3}}}
    root = Location(f"s3://{bucket}/out/", options)
    with OutputLock(root, "run-a", renew=3600) as lock:
        s3_proxy.inject("delay", "PUT", "/out/_lock.json", times=1, seconds=2)
        lock.check_held()
        assert s3_proxy.faults("delay") == 1
        assert held_by(root) == "run-a"
    assert not root.fs.exists(root.child(LOCK)), "released"
