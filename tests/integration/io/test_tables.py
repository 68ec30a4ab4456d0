"""Delta Lake and Iceberg tables as output and input, on local disk and on moto's S3 server.

The S3 server runs in a child process (:class:`tests.support.s3proxy.ServerProcess`): delta-rs holds the
GIL while it waits on S3, so the session's in-process server could never answer it. The
module's own Dask cluster is started after the AWS variables point at that server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake

from tests.conftest import S3_ENV
from tests.support.helpers import cli_job, one_worker_cluster, write_jsonl
from tests.support.lake import LAYOUT, hive_parquet
from tests.support.s3proxy import ServerProcess

ROWS = [{"id": i, "text": f"review {i}: {'great' if i % 3 else 'awful'} product"} for i in range(30)]


@pytest.fixture(scope="module")
def lake_s3() -> Iterator[ServerProcess]:
    """moto behind the fault proxy in a child process; the AWS variables point at it for the module."""

    saved = dict(os.environ)
    os.environ.update(S3_ENV)
    server = ServerProcess()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    drop_cached_filesystems()  # cached filesystems still know the session's server
    yield server
    server.stop()
    os.environ.clear()
    os.environ.update(saved)
    drop_cached_filesystems()


def drop_cached_filesystems() -> None:
    """Forget s3fs's cached instances, and finalise them here and now.

    They sit in reference cycles: left to the cyclic collector, one may be finalised on the Dask
    client's event-loop thread of a later test, where s3fs closes its session as a task of that
    loop instead of its own ("Task exception was never retrieved ... attached to a different loop")
    and the job's output shows the traceback."""
    import gc

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    gc.collect()


@pytest.fixture(scope="module")
def lake_scheduler(lake_s3: ServerProcess) -> Iterator[str]:
    with one_worker_cluster() as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def lake_job(tiny_model: Path, lake_scheduler: str):
    return cli_job(tiny_model, lake_scheduler)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, lake_s3: ServerProcess, tmp_path: Path) -> str:
    """A place for tables: a local directory or a fresh bucket on the module's S3 server."""
    if request.param == "local":
        return str(tmp_path / "lake")
    import boto3

    bucket = "lake-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:16]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def catalog_flags(where: str, tmp_path: Path) -> list[str]:
    """An SQLite catalog of its own, its warehouse beside the tables."""
    warehouse = f"{where}/warehouse" if where.startswith("s3://") else Path(where, "warehouse").as_uri()
    options = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": warehouse}
    return ["--catalog", "lake", *(f for k, v in options.items() for f in ("--catalog-option", f"{k}={v}"))]


def load_catalog(where: str, tmp_path: Path):
    from batchnlp.io.tables.iceberg import load

    flags = catalog_flags(where, tmp_path)
    return load("lake", dict(flag.split("=", 1) for flag in flags[3::2]))


def delta_options(target: str) -> dict[str, str] | None:
    """delta-rs options for a local path or the module's S3 server (plain HTTP, which object_store refuses unasked)."""
    return {"AWS_ALLOW_HTTP": "true"} if target.startswith("s3://") else None


def delta_table(target: str) -> DeltaTable:
    return DeltaTable(target, storage_options=delta_options(target))


def delta_rows(table: DeltaTable) -> pa.Table:
    """A Delta table's rows through delta-rs's own engine (DataFusion).

    Not ``to_pyarrow_table``/``to_pandas``: delta-rs's pyarrow filesystem handler sometimes aborts
    the process at exit ("terminate called without an active exception", delta-io/delta-rs#2184;
    here 4 exits in 30), which would fail the whole test run after its last test.
    """
    return pa.table(QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all())


def ids_of(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist())


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_one_commit_per_run_id_and_a_repeated_id_exits_0(lake_job, where, tmp_path, fmt):
    source = write_jsonl(tmp_path / "in" / "reviews.jsonl", ROWS)
    if fmt == "delta":
        target, flags = f"{where}/tables/review_labels", []
    else:
        target, flags = "lake.review_labels", catalog_flags(where, tmp_path)
    flags += ["--output-format", fmt]

    first = lake_job(source, target, *flags, "--run-id", "2026-11-24")
    assert first.exit_code == 0, first.output
    kind = "version 0" if fmt == "delta" else "snapshot "
    assert f"committed to {'Delta' if fmt == 'delta' else 'Iceberg'} table" in first.output and kind in first.output
    again = lake_job(source, target, *flags, "--run-id", "2026-11-24")
    assert again.exit_code == 0, again.output
    assert "already holds run 2026-11-24" in again.output
    other = lake_job(source, target, *flags, "--run-id", "2026-11-25")
    assert other.exit_code == 0, other.output

    if fmt == "delta":
        table = delta_table(target)
        assert table.version() == 1  # two commits: the repeated id made none
        runs = [entry.get("batchnlp.run_id") for entry in table.history()]
        assert runs == ["2026-11-25", "2026-11-24"]
        rows = delta_rows(table)
        assert sorted(table.file_uris()) == sorted(
            f"{target}/batchnlp-runs/{run}/part-00000.parquet" for run in ("2026-11-24", "2026-11-25")
        )
    else:
        table = load_catalog(where, tmp_path).load_table(target)
        summaries = [s.summary.get("batchnlp.run_id") for s in table.snapshots()]
        assert summaries == ["2026-11-24", "2026-11-25"]
        rows = table.scan().to_arrow()
    assert ids_of(rows) == sorted(2 * list(range(30)))  # every row once per run
    assert rows.column("sentiment").null_count == 0 and set(rows.column("_error").to_pylist()) == {None}
    assert len(rows.to_pandas()) == 60
    assert duckdb.sql("SELECT count(DISTINCT id), count(*) FROM rows").fetchall() == [(30, 60)]


def test_iceberg_in_a_glue_catalog(lake_job, lake_s3, tmp_path):
    """moto's Glue, reached like S3 through AWS_ENDPOINT_URL: one snapshot per run id there too."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="glue-lake")
    source = write_jsonl(tmp_path / "in" / "reviews.jsonl", ROWS)
    flags = ["--output-format", "iceberg", "--catalog", "glue", "--catalog-option", "type=glue"]
    flags += ["--catalog-option", "warehouse=s3://glue-lake/warehouse"]
    for _ in range(2):
        result = lake_job(source, "lake.glue_labels", *flags, "--run-id", "2026-11-24")
        assert result.exit_code == 0, result.output
    assert "already holds run 2026-11-24" in result.output
    table = boto3.client("glue").get_table(DatabaseName="lake", Name="glue_labels")["Table"]
    assert table["Parameters"]["table_type"].upper() == "ICEBERG"
    from batchnlp.io.tables.iceberg import load

    iceberg = load("glue", {"type": "glue", "warehouse": "s3://glue-lake/warehouse"}).load_table("lake.glue_labels")
    assert [s.summary.get("batchnlp.run_id") for s in iceberg.snapshots()] == ["2026-11-24"]
    assert ids_of(iceberg.scan().to_arrow()) == list(range(30))


def test_delta_partitioned_output_of_hive_input_round_trips(lake_job, where, tmp_path):
    source = hive_parquet(tmp_path / "hive")
    target = f"{where}/tables/by_day"
    flags = ["--output-format", "delta", "--partition-by", "date", "--partition-by", "lang", "--run-id", "r1"]
    result = lake_job(source, target, *flags)
    assert result.exit_code == 0, result.output
    table = delta_table(target)
    assert table.metadata().partition_columns == ["date", "lang"]
    rows = delta_rows(table)
    found = {(r["date"], r["lang"]): [] for r in rows.to_pylist()}
    for row in rows.to_pylist():
        found[(row["date"], row["lang"])].append(row["id"])
    assert {key: sorted(ids) for key, ids in found.items()} == LAYOUT
    assert all("/date=" in uri and "/lang=" in uri for uri in table.file_uris())

    # Fed back in as a table input, it is refused up front: its sentiment and _error columns would
    # be written twice (a part with two columns of one name is unreadable).
    again = lake_job(target, tmp_path / "again", "--input-format", "delta")
    assert again.exit_code == 2, again.output
    assert "the input already has columns 'sentiment', '_error', which this run writes itself" in again.output
    assert not (tmp_path / "again" / "_progress").exists()


def test_a_schema_mismatch_stops_before_any_inference(lake_job, tmp_path):
    target = tmp_path / "table"
    write_deltalake(str(target), pa.table({"id": [1], "body": ["x"]}))
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), source)
    result = lake_job(source, target, "--output-format", "delta", "--run-id", "r1")
    assert result.exit_code == 2, result.output
    assert "do not fit Delta table" in result.output
    assert "the table has no column text, sentiment, _error" in result.output
    assert "this job writes no column body" in result.output
    assert DeltaTable(str(target)).version() == 0
    assert not (target / "batchnlp-runs").exists()  # Parquet: refused at plan time, nothing staged

    # JSONL: refused once its schema is inferred, still before inference; no run is left to resume.
    result = lake_job(write_jsonl(tmp_path / "in.jsonl", ROWS[:3]), target, "--output-format", "delta")
    assert result.exit_code == 2 and "the table has no column text, sentiment, _error" in result.output
    assert "no --run-id: this run appends to Delta table" in result.output  # a retry would append again
    assert DeltaTable(str(target)).version() == 0
    assert not list(target.glob("batchnlp-runs/*/_progress/_job.json"))


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_driver_killed_before_the_table_commit_is_finished_by_the_same_run_id(
    lake_job, lake_s3, lake_scheduler, tiny_model, tmp_path, fmt
):
    import boto3

    bucket = f"kill-{fmt}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    source = write_jsonl(tmp_path / "in" / "reviews.jsonl", ROWS)
    if fmt == "delta":
        target, flags, commit = f"s3://{bucket}/labels", [], r"/_delta_log/0+1\.json"
    else:
        target, flags, commit = "lake.labels", catalog_flags(f"s3://{bucket}", tmp_path), r"\.metadata\.json"
    flags = [*flags, "--output-format", fmt, "--rows-per-partition", "10"]
    assert lake_job(source, target, *flags, "--run-id", "night-1").exit_code == 0

    # The next commit's PUT is held until the driver is dead; it never reaches S3.
    lake_s3.inject(fault="hold", method="PUT", path=commit, seconds=600)
    command = [sys.executable, "-m", "batchnlp", "run", str(source), target, *flags, "--run-id", "night-2"]
    command += ["--model", f"sentiment={tiny_model}", "--scheduler", lake_scheduler, "-q"]
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lake_s3.wait_for("held PUT", timeout=240)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()

    def committed_rows() -> tuple[list[str], int]:
        if fmt == "delta":
            table = delta_table(target)
            return [e.get("batchnlp.run_id") for e in table.history()], delta_rows(table).num_rows
        table = load_catalog(f"s3://{bucket}", tmp_path).load_table(target)
        return [s.summary.get("batchnlp.run_id") for s in table.snapshots()], table.scan().to_arrow().num_rows

    assert committed_rows() == (["night-1"], 30)  # the killed run's files are staged, not in the table
    staged = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="")["Contents"]
    assert any("batchnlp-runs/night-2/" in o["Key"] and o["Key"].endswith(".parquet") for o in staged)

    # The same run id finishes it; so does --resume, which finds the table's one interrupted run.
    finishing = ["--run-id", "night-2"] if fmt == "delta" else ["--resume"]
    finished = lake_job(source, target, *flags, *finishing)
    assert finished.exit_code == 0, finished.output
    assert "run id night-2" in finished.output
    assert "committed to" in finished.output
    runs, rows = committed_rows()
    assert sorted(runs) == ["night-1", "night-2"] and rows == 60  # one commit, every row once more
    assert "parts kept from the interrupted run" in finished.output, finished.output
    again = lake_job(source, target, *flags, "--run-id", "night-2")
    assert again.exit_code == 0 and "already holds run night-2" in again.output
    assert committed_rows()[1] == 60


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_table_input_is_read_at_its_latest_or_a_given_version(lake_job, where, tmp_path, fmt):
    first = pa.table({"id": list(range(10)), "text": [f"old {i}" for i in range(10)], "lang": ["en", "de"] * 5})
    second = pa.table({"id": list(range(10, 15)), "text": [f"new {i}" for i in range(5)], "lang": ["en"] * 5})
    if fmt == "delta":
        source = f"{where}/tables/reviews"
        write_deltalake(source, first, partition_by=["lang"], storage_options=delta_options(source))
        write_deltalake(source, second, mode="append", partition_by=["lang"], storage_options=delta_options(source))
        versions, flags = [0, 1], []
    else:
        source, flags = "lake.reviews", catalog_flags(where, tmp_path)
        catalog = load_catalog(where, tmp_path)
        catalog.create_namespace_if_not_exists("lake")
        table = catalog.create_table(source, schema=first.schema)
        table.append(first)
        table = catalog.load_table(source)
        table.append(second)
        versions = [s.snapshot_id for s in catalog.load_table(source).snapshots()]
    flags = [*flags, "--input-format", fmt]

    latest = lake_job(source, tmp_path / "latest", *flags)
    assert latest.exit_code == 0, latest.output
    rows = pq.read_table(tmp_path / "latest")
    assert ids_of(rows) == list(range(15))
    by_id = {r["id"]: r for r in rows.to_pylist()}
    assert by_id[1]["lang"] == "de" and by_id[12]["lang"] == "en"  # Delta: from the log's partition values
    manifest = json.loads((tmp_path / "latest" / "_manifest.json").read_text())
    key = "version" if fmt == "delta" else "snapshot_id"
    assert manifest["input"]["table"][key] == versions[1]

    old = lake_job(source, tmp_path / "old", *flags, "--table-version", versions[0])
    assert old.exit_code == 0, old.output
    assert ids_of(pq.read_table(tmp_path / "old")) == list(range(10))
    assert json.loads((tmp_path / "old" / "_manifest.json").read_text())["input"]["table"][key] == versions[0]


def test_resume_without_a_run_id_asks_which_interrupted_run_to_finish(tiny_model, tmp_path):
    from click.testing import CliRunner

    from batchnlp.cli import main

    table = tmp_path / "table"
    for run in ("night-1", "night-2"):  # two runs that staged files and died before their commits
        record = table / "batchnlp-runs" / run / "_progress" / "_job.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"run_id": run}))
    source = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    args = ["run", str(source), str(table), "--output-format", "delta", "--resume"]
    result = CliRunner().invoke(main, [*args, "--model", f"sentiment={tiny_model}"])
    assert result.exit_code == 2, result.output
    assert "has 2 interrupted runs (night-1, night-2); pass --run-id ID with --resume" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--output-format", "iceberg"], "output of format iceberg must be a table name namespace.table"),
        (["--output-format", "delta", "--overwrite"], "--overwrite does not apply to a table"),
        (["--output-format", "iceberg", "--partition-by", "lang"], "--partition-by does not apply to Iceberg output"),
        (["--table-version", "3"], "--table-version (a Delta version or Iceberg snapshot) needs --input-format"),
    ],
)
def test_table_settings_are_checked_before_any_work(tiny_model, tmp_path, flags, message):
    from click.testing import CliRunner

    from batchnlp.cli import main

    source = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    args = ["run", str(source), str(tmp_path / "out"), "--model", f"sentiment={tiny_model}", *flags]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output
