"""Concurrent runs on one OUTPUT: the second is refused while the first lives; a dead owner's lock is broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from batchnlp.errors import OutputError
from batchnlp.lock import LOCK, OutputLock, stale
from batchnlp.storage import Location
from tests.helpers import invoke, write_jsonl


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
    here, now = socket.gethostname(), time.time()
    assert stale({"host": here, "pid": os.getpid(), "renewed_at": now}, now) is None
    assert stale({"host": "elsewhere", "pid": 1, "renewed_at": now - 60}, now) is None, "renewed a minute ago"
    assert "not renewed for 900 s" in stale({"host": "elsewhere", "pid": 1, "renewed_at": now - 900}, now)


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
    args += ["--workers", "1", "--tokens-per-batch", "8"]  # one row a batch: slow enough to kill mid-job
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
