"""Sharded runs: N shards of one run, each on its own, then one commit (batchnlp.execution.shards.plan).

Shards run as real processes where it matters (an array job's children, one killed and rerun),
and in this process on a shared cluster elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.execution.shards.plan import PLAN, Shard, shard_of
from tests.integration.execution.test_scheduler_lifecycle import ids, start
from tests.support.helpers import cli_job, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

ROWS = 600


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """600 rows of mixed lengths: about six units of 100 rows."""
    rows = [{"id": i, "text": f"review {i} " + "word " * (i % 37)} for i in range(ROWS)]
    return write_jsonl(tmp_path / "in.jsonl", rows)


@pytest.fixture
def shard_job(tiny_model: Path, scheduler: str, source: Path, tmp_path: Path):
    """``shard(i, n, *flags)``: shard i/n of run night-1 of ``source`` into tmp_path/out, in this process."""
    job = cli_job(tiny_model, scheduler)

    def shard(index: int, count: int, *flags: str, out: str | Path = tmp_path / "out") -> object:
        return job(
            source, out, "--rows-per-partition", "100", "--shard", f"{index}/{count}", "--run-id", "night-1", *flags
        )

    return shard


def commit(*args: object) -> object:
    result = CliRunner().invoke(main, ["commit", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def test_shares_are_fixed_and_cover_every_unit_once():
    units = list(range(11))
    shares = [Shard(i, 4).take(units) for i in range(4)]
    assert sorted(u for share in shares for u in share) == units
    assert all(shard_of(position, 4) == i for i, share in enumerate(shares) for position in share)
    assert Shard.parse("3/8") == Shard(3, 8)
    assert Shard.from_environment(8, {"AWS_BATCH_JOB_ARRAY_INDEX": "5"}) == Shard(5, 8)
    assert Shard.from_environment(8, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 8)


def test_units_are_sized_for_every_shard(tiny_model, scheduler, source, tmp_path):
    """Automatic sizing counts every shard's workers: three one-worker shards of 600 rows each get a unit
    (sized for one machine, the plan had two units and the third shard nothing to do)."""
    out = tmp_path / "out"
    result = cli_job(tiny_model, scheduler)(source, out, "--shard", "2/3", "--run-id", "night-1")
    assert result.exit_code == 0, result.output
    units = json.loads((out / PLAN).read_text())["units"]
    assert len(units) >= 3 and "shard 2/3 wrote 0 rows" not in result.output


def test_array_children_one_killed_and_rerun_then_one_commit(tiny_model, source, tmp_path):
    """Three children of an array job as processes, the index in their environment; the Spot reclaim of one
    (SIGKILL, no drain) costs that shard's unfinished units only, and its retry keeps its finished parts."""
    out = tmp_path / "out"
    args = [str(source), str(out), "--model", f"sentiment={tiny_model}", "--workers", "1", "--rows-per-partition", "50"]
    # one row per batch, on torch (ONNX Runtime runs such batches far faster), each unit labelled on its own
    # (deduplication writes a wave's parts together, at the end of its labelling): slow enough to kill mid-way
    args += ["--tokens-per-batch", "8", "--backend", "torch", "--no-dedup", "--shards", "3", "--run-id", "night-1"]
    env = {i: {"AWS_BATCH_JOB_ARRAY_INDEX": str(i), "AWS_BATCH_JOB_ID": f"night:{i}"} for i in range(3)}
    children = {i: start(args, env[i]) for i in range(3)}
    deadline = time.time() + 240
    while not [p for p in (out / "_progress").glob("part-*.json") if int(p.stem[5:]) % 3 == 1]:
        assert children[1].poll() is None and time.time() < deadline, children[1].communicate()[0]
        time.sleep(0.02)
    os.killpg(children[1].pid, signal.SIGKILL)  # the host is gone: no drain, the lock stays behind
    children[1].wait()
    for i in (0, 2):
        output, _ = children[i].communicate(timeout=300)
        assert children[i].returncode == 0, output
        assert f"shard {i}/3 wrote" in output and "nothing committed" in output

    refused = commit(out, "--run-id", "night-1")
    assert refused.exit_code == 1, refused.output
    assert "units have no intact part" in refused.output and "of shard 1 of 3" in refused.output
    assert "--shard 1/3 --run-id night-1" in refused.output and "--only-shards 1" in refused.output
    assert not (out / "_SUCCESS").exists()

    retry = start(args, {**env[1], "AWS_BATCH_JOB_ATTEMPT": "2"})  # Batch retries the child with its own job id
    output, _ = retry.communicate(timeout=300)
    assert retry.returncode == 0, output
    assert "parts kept from an earlier attempt" in output  # the killed attempt's parts were not redone

    done = commit(out, "--run-id", "night-1")
    assert done.exit_code == 0, done.output
    assert f"wrote {ROWS} rows" in done.output
    assert ids(out) == list(range(ROWS))  # every row exactly once
    manifest = json.loads((out / "_manifest.json").read_text())
    plan = json.loads((out / PLAN).read_text())
    assert [p["unit"]["index"] for p in manifest["parts"]] == [u["index"] for u in plan["units"]]
    assert manifest["estimate"]["rows"]["low"] <= ROWS <= manifest["estimate"]["rows"]["high"]  # the planner's
    again = commit(out, "--run-id", "night-1")
    assert again.exit_code == 0 and "already complete" in again.output


def test_a_shard_that_finds_the_plan_stored_while_its_cluster_started_runs_on_it(shard_job, tmp_path, monkeypatch):
    """Array children start together: each finds no plan, starts its cluster, and by then another may
    have stored the plan and its job record. That record is the same run's, not an unfinished other run."""
    import batchnlp.execution.shards.run

    assert shard_job(0, 2).exit_code == 0
    looks, real = [], batchnlp.execution.shards.run.read_plan

    def read_plan(*args):  # shard 1's first look came before shard 0 had stored anything
        looks.append(args)
        return real(*args) if len(looks) > 1 else None

    monkeypatch.setattr(batchnlp.execution.shards.run, "read_plan", read_plan)
    result = shard_job(1, 2)
    assert result.exit_code == 0, result.output
    assert commit(tmp_path / "out", "--run-id", "night-1").exit_code == 0
    assert ids(tmp_path / "out") == list(range(ROWS))


def test_commit_names_a_missing_shard_then_a_damaged_part(shard_job, tmp_path):
    out = tmp_path / "out"
    assert shard_job(0, 2).exit_code == 0
    units = [unit["index"] for unit in json.loads((out / PLAN).read_text())["units"]]
    odd = [f"part-{index:05d}" for index in units if index % 2]
    missing = commit(out, "--run-id", "night-1")
    assert missing.exit_code == 1, missing.output
    assert f"{len(odd)} of {len(units)} units have no intact part: {', '.join(odd)}, of shard 1 of 2" in missing.output
    assert shard_job(1, 2).exit_code == 0
    part = out / "part-00003.parquet"
    part.write_bytes(part.read_bytes()[:-10] + b"0123456789")  # a bad copy, same size
    damaged = commit(out, "--run-id", "night-1")
    assert damaged.exit_code == 1 and "part-00003 (damaged), of shard 1 of 2" in damaged.output
    rerun = shard_job(1, 2)
    assert rerun.exit_code == 0 and "2 parts kept from an earlier attempt" in rerun.output  # 00001, 00005
    assert commit(out, "--run-id", "night-1").exit_code == 0
    assert ids(out) == list(range(ROWS))


def test_inspect_says_which_shards_have_units_left(shard_job, tmp_path):
    out = tmp_path / "out"
    assert shard_job(1, 3).exit_code == 0
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert "SHARDED over 3, not committed" in shown.output and "shards 0, 2 have units left" in shown.output
    assert shard_job(0, 3).exit_code == 0 and shard_job(2, 3).exit_code == 0
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert "commit it: batchnlp commit" in shown.output and "--run-id night-1" in shown.output


def test_a_shard_of_another_job_or_shard_count_is_refused(shard_job, topics_model, tmp_path):
    assert shard_job(0, 2).exit_code == 0
    other_model = shard_job(1, 2, "--model", f"sentiment={topics_model}")
    assert other_model.exit_code == 2, other_model.output
    assert "was planned with other settings" in other_model.output
    assert "the model of task 'sentiment' differ" in other_model.output
    other_count = shard_job(1, 3)
    assert other_count.exit_code == 2 and "its shard count (2, this one 3)" in other_count.output


def test_a_shard_refuses_an_input_file_replaced_since_the_plan(shard_job, source):
    """A unit is a byte range: read from a replaced file it would label other rows, or half lines."""
    assert shard_job(0, 2).exit_code == 0
    source.write_text(source.read_text() + '{"id": 600, "text": "late"}\n')
    result = shard_job(1, 2)
    assert result.exit_code == 2, result.output
    assert "input changed since run night-1 was planned" in result.output and "in.jsonl" in result.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard", "0/2"], "a sharded run needs a run id"),
        (["--shard", "2/2", "--run-id", "x"], "shard 2/2 does not exist"),
        (["--shard", "two", "--run-id", "x"], "--shard takes INDEX/COUNT"),
        (["--shards", "4", "--run-id", "x"], "neither is set"),
        (["--shard", "0/2", "--run-id", "x", "--overwrite"], "--overwrite does not apply to a shard"),
    ],
)
def test_shard_flags_that_cannot_work_exit_2(tiny_model, source, tmp_path, flags, message, monkeypatch):
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    result = CliRunner().invoke(
        main, ["run", str(source), str(tmp_path / "out"), "--model", f"sentiment={tiny_model}", *flags]
    )
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_commit_job_of_a_sharded_submission_commits_from_the_spec(tiny_model, scheduler, source, tmp_path):
    """What `batchnlp submit --shards N` runs: children `run --spec S --resume --run-date D --run-id D --shards N`
    (index from the environment), then `commit --spec S --run-date D --run-id D`."""
    spec = tmp_path / "nightly.yaml"
    spec.write_text(
        f"input: {source}\noutput: {tmp_path}/labelled/dt=${{run_date}}/\nmodels: {{sentiment: {tiny_model}}}\n"
        f"scheduler: {scheduler}\nworkers: 1\n"
    )
    night = ["--spec", str(spec), "--run-date", "2026-11-24", "--run-id", "2026-11-24"]
    for index in range(2):
        child = CliRunner(env={"AWS_BATCH_JOB_ARRAY_INDEX": str(index)}).invoke(
            main, ["run", *night, "--resume", "--shards", "2"]
        )
        assert child.exit_code == 0 and f"shard {index}/2 wrote" in child.output, child.output
    done = commit(*night, "--log-format", "json")
    assert done.exit_code == 0, done.output
    assert ids(tmp_path / "labelled" / "dt=2026-11-24") == list(range(ROWS))
    metrics = json.loads(done.output.strip().splitlines()[-1])
    assert (metrics["Committed"], metrics["Rows"]) == (1, ROWS)  # the night-not-committed alarm's data point


def test_commit_of_a_run_no_shard_planned_exits_2(tmp_path):
    result = commit(tmp_path / "out", "--run-id", "never")
    assert result.exit_code == 2 and "holds no sharded run never" in result.output


def test_a_shard_will_not_mix_into_another_committed_run(shard_job, tiny_model, scheduler, source, tmp_path):
    out = tmp_path / "out"
    assert cli_job(tiny_model, scheduler)(source, out, "--run-id", "yesterday").exit_code == 0
    result = shard_job(0, 2)
    assert result.exit_code == 2 and "holds committed run yesterday" in result.output


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_shards_of_a_table_run_make_one_table_commit(shard_job, tmp_path, fmt):
    if fmt == "delta":
        target, flags = tmp_path / "table", ["--output-format", "delta"]
        finish = [target, "--run-id", "night-1"]  # Delta is found from the staged run
    else:
        catalog = ["--catalog", "lake", "--catalog-option", "type=sql"]
        catalog += ["--catalog-option", f"uri=sqlite:///{tmp_path / 'catalog.db'}"]
        catalog += ["--catalog-option", f"warehouse={(tmp_path / 'warehouse').as_uri()}"]
        target, flags = "lake.labels", ["--output-format", "iceberg", *catalog]
        finish = [target, "--run-id", "night-1", *flags]
    for index in range(2):
        assert shard_job(index, 2, *flags, out=target).exit_code == 0
    done = commit(*finish)
    assert done.exit_code == 0 and "(one commit, run id night-1)" in done.output, done.output
    assert table_ids(fmt, target, tmp_path) == list(range(ROWS))
    again = commit(*finish)
    assert again.exit_code == 0 and "already holds run night-1" in again.output
    assert table_ids(fmt, target, tmp_path) == list(range(ROWS))


def table_ids(fmt: str, target: str | Path, tmp_path: Path) -> list[int]:
    if fmt == "delta":
        from deltalake import DeltaTable

        return sorted(DeltaTable(str(target)).to_pyarrow_table().column("id").to_pylist())
    from batchnlp.io.tables.iceberg import load

    options = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
        "warehouse": (tmp_path / "warehouse").as_uri(),
    }
    return sorted(pa.table(load("lake", options).load_table("lake.labels").scan().to_arrow()).column("id").to_pylist())


def test_shards_on_s3_share_one_stored_plan(shard_job, bucket, s3):
    out = f"s3://{bucket}/labelled/night-1"
    for index in range(3):
        assert shard_job(index, 3, out=out).exit_code == 0
    planned = json.loads(s3.get_object(Bucket=bucket, Key=f"labelled/night-1/{PLAN}")["Body"].read())
    assert planned["shards"] == 3 and len(planned["units"]) > 3
    done = commit(out, "--run-id", "night-1")
    assert done.exit_code == 0, done.output
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="labelled/night-1/_manifest.json")["Body"].read())
    assert manifest["totals"]["rows_out"] == ROWS and manifest["run_id"] == "night-1"


def test_shards_of_an_empty_input_commit_an_empty_run(shard_job, source, tmp_path):
    source.write_text("")  # a night with nothing in it still commits: downstream jobs wait on _SUCCESS
    for index in range(2):
        result = shard_job(index, 2)
        assert result.exit_code == 0, result.output
    result = commit(tmp_path / "out", "--run-id", "night-1")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]["rows_out"] == 0
