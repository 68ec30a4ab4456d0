"""A worker process SIGKILLed mid-job loses nothing: Dask reruns its unit elsewhere, every row lands once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.dataset as ds
import pytest

from tests.support.helpers import worker_processes, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_a_killed_worker_costs_a_rerun_not_a_row(tmp_path, tiny_model, dedup):
    """Labelling each distinct input once, the keys, labels and parts tasks of the dead worker are rerun
    (by whichever worker Dask picks: the restarted one holds no data, so it may get none); labelling
    every row, the restarted worker takes units too."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review number {i}"} for i in range(3000)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "batchnlp", "run", str(source), str(out), "--model", f"sentiment={tiny_model}",
               "--rows-per-partition", "100", "--workers", "2", "--tokens-per-batch", "8",
               "--backend", "torch",  # one row a batch on torch: slow enough to kill a worker mid-job
               *([] if dedup else ["--no-dedup"])]  # fmt: skip
    driver = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list((out / "_progress").glob("part-*.json"))) < 2 and time.time() < deadline:
        assert driver.poll() is None, "the run ended before a worker could be killed"
        time.sleep(0.01)
    workers = worker_processes(driver)
    assert len(workers) == 2
    workers[0].send_signal(signal.SIGKILL)
    before = {worker.pid for worker in workers}

    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 0, output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["rows_out"] == 3000
    assert sorted(p.name for p in out.glob("part-*")) == sorted(part["path"] for part in manifest["parts"])
    restarted = {part["worker"] for part in manifest["parts"] if int(part["worker"].rsplit(":", 1)[1]) not in before}
    assert restarted or dedup, "a restarted worker process did some units"
    ids = ds.dataset(str(out), format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == list(range(3000)), "every row exactly once"
