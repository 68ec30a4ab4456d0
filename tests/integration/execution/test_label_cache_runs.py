"""``--label-cache`` in real runs on a Dask cluster: a night serves what an earlier night labelled,
runs the rest, and adds it in its commit; the outputs are those of a run without the cache.

Local caches and moto's S3 (through the fault proxy), plain runs, shards, resume, Delta output,
``--keep-probs``; a changed setting misses; a failed night adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.ledger.label_cache import LabelCache
from tests.support.helpers import cli_job, write_jsonl

pytestmark = pytest.mark.cluster

ROWS = 400
SCORE_TOLERANCE = 1e-5


def night(day: int) -> list[dict]:
    """A nightly snapshot: 40 distinct texts repeated, and every 20th row rewritten each night."""
    return [
        {
            "id": i,
            "text": f"review {i % 40}: " + "fine " * (i % 7) + (f" (edited on night {day})" if i % 20 == day else ""),
        }
        for i in range(ROWS)
    ]


def rows(out: Path, column: str = "sentiment") -> list[dict]:
    table = ds.dataset(str(out), format="parquet").to_table().sort_by("id")
    return [
        dict(zip(["id", column, "_error"], r, strict=True))
        for r in zip(*(table.column(c).to_pylist() for c in ("id", column, "_error")), strict=True)
    ]


def assert_same_labels(a: list[dict], b: list[dict]) -> None:
    assert [r["_error"] for r in a] == [r["_error"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["sentiment"]["label"] == y["sentiment"]["label"]
        assert abs(x["sentiment"]["score"] - y["sentiment"]["score"]) <= SCORE_TOLERANCE
        if "probs" in x["sentiment"]:
            assert x["sentiment"]["probs"] == pytest.approx(y["sentiment"]["probs"], abs=SCORE_TOLERANCE)


def dedup_figures(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())["totals"]["dedup"]["sentiment"]


@pytest.fixture
def job(tiny_model, scheduler):
    return cli_job(tiny_model, scheduler)


def test_a_second_night_serves_the_first_nights_labels_and_runs_only_what_changed(job, tmp_path):
    cache = tmp_path / "cache"
    first = write_jsonl(tmp_path / "night-1.jsonl", night(1))
    second = write_jsonl(tmp_path / "night-2.jsonl", night(2))
    assert job(first, tmp_path / "out-1", "--label-cache", cache).exit_code == 0
    one = dedup_figures(tmp_path / "out-1")
    assert one["cached"] == 0 and one["run"] == one["distinct"]
    assert LabelCache(str(cache)).current().version == 1

    result = job(second, tmp_path / "out-2", "--label-cache", cache)
    assert result.exit_code == 0, result.output
    two = dedup_figures(tmp_path / "out-2")
    changed = len({r["text"] for r in night(2)} - {r["text"] for r in night(1)})
    assert two["run"] == changed and two["cached"] == two["distinct"] - changed
    assert "from the label cache" in result.output
    plain = job(second, tmp_path / "plain", "--no-dedup")
    assert plain.exit_code == 0, plain.output
    assert_same_labels(rows(tmp_path / "out-2"), rows(tmp_path / "plain"))
    cached = LabelCache(str(cache))
    assert cached.current().version == 2 and cached.inspect()["entries"] == one["distinct"] + changed


def test_a_changed_setting_misses_and_keeps_every_field_with_keep_probs(job, tmp_path):
    cache = tmp_path / "cache"
    source = write_jsonl(tmp_path / "in.jsonl", night(1))
    assert job(source, tmp_path / "a", "--label-cache", cache).exit_code == 0
    assert job(source, tmp_path / "b", "--label-cache", cache, "--max-length", "8").exit_code == 0
    assert dedup_figures(tmp_path / "b")["cached"] == 0, "another max length is another namespace"
    assert job(source, tmp_path / "c", "--label-cache", cache, "--keep-probs").exit_code == 0
    assert dedup_figures(tmp_path / "c")["cached"] == 0
    again = job(source, tmp_path / "d", "--label-cache", cache, "--keep-probs")
    assert again.exit_code == 0 and dedup_figures(tmp_path / "d")["run"] == 0
    assert_same_labels(rows(tmp_path / "d"), rows(tmp_path / "c"))
    assert all(len(r["sentiment"]["probs"]) == 2 for r in rows(tmp_path / "d") if r["sentiment"])
    assert len(LabelCache(str(cache)).inspect()["namespaces"]) == 3


def test_a_failed_night_adds_nothing(job, tmp_path):
    cache = tmp_path / "cache"
    source = write_jsonl(tmp_path / "in.jsonl", night(1))
    with source.open("a") as f:
        f.write("{not json\n")
    failed = job(source, tmp_path / "out", "--label-cache", cache, "--on-bad-lines", "skip", "--max-bad-lines", "0")
    assert failed.exit_code != 0 and "nothing was committed" in failed.output
    assert not (cache / "_log").exists() or LabelCache(str(cache)).current().version == 0


def test_resume_and_delta_output_with_a_cache(job, tmp_path):
    cache = tmp_path / "cache"
    source = write_jsonl(tmp_path / "in.jsonl", night(1))
    table = tmp_path / "table"
    result = job(source, table, "--label-cache", cache, "--output-format", "delta", "--run-id", "night-1")
    assert result.exit_code == 0, result.output
    retried = job(source, table, "--label-cache", cache, "--output-format", "delta", "--run-id", "night-1")
    assert retried.exit_code == 0, retried.output
    assert LabelCache(str(cache)).current().version == 1, "a retried night adds nothing twice"
    again = job(source, tmp_path / "files", "--label-cache", cache)
    assert again.exit_code == 0 and dedup_figures(tmp_path / "files")["run"] == 0


@pytest.mark.s3
def test_shards_on_s3_read_one_cache_version_and_commit_once(job, tmp_path, s3, bucket, s3_proxy):
    cache = f"s3://{bucket}/labels"
    first = write_jsonl(tmp_path / "night-1.jsonl", night(1))
    assert job(first, f"s3://{bucket}/out-1", "--label-cache", cache).exit_code == 0
    second = write_jsonl(tmp_path / "night-2.jsonl", night(2))
    out = f"s3://{bucket}/out-2"
    s3_proxy.inject("503", "PUT", "labels/", times=3)  # SlowDown on the cache's writes: retried
    for index in range(2):
        shard = job(second, out, "--label-cache", cache, "--shard", f"{index}/2", "--run-id", "night-2",
                    "--rows-per-partition", "100")  # fmt: skip
        assert shard.exit_code == 0, shard.output
    assert LabelCache(cache).current().version == 1, "shards commit nothing"
    committed = CliRunner().invoke(main, ["commit", out, "--run-id", "night-2"])
    assert committed.exit_code == 0, committed.output
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out-2/_manifest.json")["Body"].read())
    assert manifest["label_cache"]["read_version"] == 1
    assert LabelCache(cache).current().version == 2
    changed = len({r["text"] for r in night(2)} - {r["text"] for r in night(1)})
    figures = manifest["totals"]["dedup"]["sentiment"]
    # Shards never talk: a new text in both shards runs in each; nothing the cache held runs.
    assert changed <= figures["run"] < 2 * changed and figures["cached"] + figures["run"] == figures["distinct"]
    assert s3_proxy.faults("503") == 3


def test_a_resumed_night_adds_both_attempts_labels(tiny_model, tmp_path):
    """A night killed after some parts (SIGKILL: no drain), then resumed: the commit adds the labels of
    the parts the first attempt recorded and of those the second ran, so the next night runs nothing."""
    import os
    import signal

    from tests.integration.execution.test_scheduler_lifecycle import ids, start, wait_for_parts

    cache = tmp_path / "cache"
    rows = [{"id": i, "text": f"review number {i % 1500} of the night"} for i in range(2400)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    args = [str(source), str(out), "--model", f"sentiment={tiny_model}", "--rows-per-partition", "100",
            "--workers", "1", "--tokens-per-batch", "8", "--backend", "torch", "--label-cache", str(cache)]  # fmt: skip
    first = start(args)
    wait_for_parts(out, first, 4)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    resumed = start([*args, "--resume"])
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "parts kept from the interrupted run" in output
    assert ids(out) == list(range(2400))
    assert LabelCache(str(cache)).inspect()["entries"] >= 1500
    again = start([str(source), str(tmp_path / "again"), *args[2:]])
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert dedup_figures(tmp_path / "again")["run"] == 0, "every text was labelled by the resumed night"


def test_incremental_nights_with_a_cache(job, tmp_path):
    """--incremental labels the new file only; the cache serves the texts it repeats from the old one."""
    landing = tmp_path / "landing"
    cache = tmp_path / "cache"
    write_jsonl(landing / "day-1.jsonl", night(1))
    assert job(landing, tmp_path / "out", "--incremental", "--run-id", "d1", "--label-cache", cache).exit_code == 0
    write_jsonl(landing / "day-2.jsonl", night(2))
    second = job(landing, tmp_path / "out", "--incremental", "--run-id", "d2", "--label-cache", cache)
    assert second.exit_code == 0, second.output
    figures = json.loads((tmp_path / "out" / "run_id=d2" / "_manifest.json").read_text())["totals"]["dedup"]
    changed = len({r["text"] for r in night(2)} - {r["text"] for r in night(1)})
    assert figures["sentiment"]["rows"] == ROWS and figures["sentiment"]["run"] == changed


def test_concurrent_shards_share_one_cache_version_and_one_commit(tiny_model, tmp_path):
    """Two shards of night 2 running at once (processes, as array children) read the version night 1
    committed, write their labels beside it, and the one commit adds them in one version."""
    from tests.integration.execution.test_scheduler_lifecycle import start

    cache = tmp_path / "cache"
    flags = ["--model", f"sentiment={tiny_model}", "--workers", "1", "--rows-per-partition", "50",
             "--label-cache", str(cache)]  # fmt: skip
    first = start([str(write_jsonl(tmp_path / "night-1.jsonl", night(1))), str(tmp_path / "out-1"), *flags])
    assert first.wait(timeout=300) == 0, first.communicate()[0]
    second = write_jsonl(tmp_path / "night-2.jsonl", night(2))
    out = tmp_path / "out-2"
    shards = [start([str(second), str(out), *flags, "--shard", f"{i}/2", "--run-id", "night-2"]) for i in range(2)]
    for shard in shards:
        output, _ = shard.communicate(timeout=300)
        assert shard.returncode == 0, output
    assert LabelCache(str(cache)).current().version == 1
    committed = CliRunner().invoke(main, ["commit", str(out), "--run-id", "night-2"])
    assert committed.exit_code == 0, committed.output
    assert LabelCache(str(cache)).current().version == 2
    again = start([str(second), str(tmp_path / "out-3"), *flags])
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert dedup_figures(tmp_path / "out-3")["run"] == 0, "night 2's shards labelled every new text into the cache"
    assert rows(tmp_path / "out-3") == rows(out)
