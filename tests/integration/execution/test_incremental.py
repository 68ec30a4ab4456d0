"""--incremental: each run labels only the input files no committed run at OUTPUT read as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from batchnlp.cli import main
from batchnlp.io.storage import InputFile
from tests.support.helpers import cli_job, manifest, write_jsonl


def write_file(folder: Path, number: int, rows: int, text: str = "row") -> None:
    write_jsonl(folder / f"f{number}.jsonl", [{"id": number * 100 + i, "text": f"{text} {i}"} for i in range(rows)])


def labelled(out: Path) -> pa.Table:
    """Every committed run's rows under OUTPUT/run_id=ID/, with their run_id."""
    runs = [p.parent.name for p in out.glob("run_id=*/_SUCCESS")]
    table = ds.dataset(str(out), format="parquet", partitioning="hive").to_table()
    return table.filter(pa.compute.is_in(table["run_id"], pa.array(r.split("=", 1)[1] for r in runs)))


@pytest.fixture
def incremental_job(tiny_model, scheduler, tmp_path):
    job = cli_job(tiny_model, scheduler)
    source, out = tmp_path / "in", tmp_path / "out"

    def run(run_id: str, *flags: str) -> object:
        result = job(source, out, "--incremental", "--run-id", run_id, *flags)
        assert result.exit_code == 0, result.output
        return result

    return source, out, run


def test_runs_label_added_files_once_and_report_replaced_and_deleted_ones(incremental_job):
    source, out, run = incremental_job
    for number in range(3):
        write_file(source, number, 10)
    run("d1")
    write_file(source, 3, 5)
    run("d2")
    second = json.loads((out / "run_id=d2" / "_manifest.json").read_text())
    assert second["totals"]["rows_in"] == 5 and second["input"]["incremental"]["new"][0].endswith("f3.jsonl")
    assert second["input"]["incremental"]["already_labelled"] == 3

    nothing = run("d3")
    assert "nothing new to label" in nothing.output and not (out / "run_id=d3").exists()

    write_file(source, 0, 7, text="replaced")  # other content, other size
    (source / "f1.jsonl").unlink()
    fourth = run("d4")
    assert "1 input files replaced since they were labelled" in fourth.output and "(run d1)" in fourth.output
    assert "1 input files gone from the input" in fourth.output
    record = json.loads((out / "run_id=d4" / "_manifest.json").read_text())["input"]["incremental"]
    assert list(record["replaced"].values()) == ["d1"] and list(record["deleted"].values()) == ["d1"]
    assert record["covered_by"] == ["d1", "d2"]

    rows = labelled(out)
    assert rows.num_rows == 10 + 10 + 10 + 5 + 7  # every version of every file, each once
    latest = rows.filter(pa.compute.equal(rows["run_id"], "d4"))
    assert sorted(latest["id"].to_pylist()) == list(range(7))

    retry = run("d4")  # a scheduler's retry of a committed night: found committed, not "nothing new"
    assert "already complete" in retry.output


def test_an_incremental_delta_table_appends_each_new_file_once(tiny_model, scheduler, tmp_path):
    job = cli_job(tiny_model, scheduler)
    source, table = tmp_path / "in", tmp_path / "table"
    flags = ["--incremental", "--output-format", "delta"]
    write_file(source, 0, 10)
    assert job(source, table, *flags, "--run-id", "d1").exit_code == 0
    write_file(source, 1, 6)
    second = job(source, table, *flags, "--run-id", "d2")
    assert second.exit_code == 0 and "(one commit, run id d2)" in second.output
    ids = sorted(DeltaTable(str(table)).to_pyarrow_table().column("id").to_pylist())
    assert ids == list(range(10)) + list(range(100, 106))
    nothing = job(source, table, *flags, "--run-id", "d3")
    assert nothing.exit_code == 0 and "nothing new to label" in nothing.output
    assert DeltaTable(str(table)).version() == 1  # two appends, no empty third


def test_a_delta_input_labels_only_data_files_added_since_the_last_run(tiny_model, scheduler, tmp_path):
    job = cli_job(tiny_model, scheduler)
    source, out = str(tmp_path / "reviews"), tmp_path / "out"
    write_deltalake(source, pa.table({"id": list(range(10)), "text": [f"old {i}" for i in range(10)]}))
    flags = ["--incremental", "--input-format", "delta"]
    assert job(source, out, *flags, "--run-id", "d1").exit_code == 0
    write_deltalake(
        source, pa.table({"id": list(range(10, 14)), "text": [f"new {i}" for i in range(4)]}), mode="append"
    )
    assert job(source, out, *flags, "--run-id", "d2").exit_code == 0
    second = pa.Table.from_batches(ds.dataset(str(out / "run_id=d2"), format="parquet").to_batches())
    assert sorted(second["id"].to_pylist()) == list(range(10, 14))
    recorded = json.loads((out / "run_id=d2" / "_manifest.json").read_text())["input"]
    assert recorded["table"]["version"] == 1 and recorded["incremental"]["already_labelled"] == 1


def test_selection_compares_size_and_etag_with_the_latest_run_that_read_a_path():
    from batchnlp.execution.incremental import select

    older, newer = manifest("r1"), manifest("r2")
    older.committed_at, newer.committed_at = "2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00"
    older.input = {"files": [{"path": "a", "size": 1, "etag": "x"}, {"path": "b", "size": 2, "etag": "y"}]}
    newer.input = {"files": [{"path": "a", "size": 3, "etag": "z"}]}  # r2 relabelled a replaced a
    files = [InputFile("a", 3, "z"), InputFile("b", 2, "changed"), InputFile("c", 1, None)]
    chosen = select(files, lambda path: path, [newer, older])
    assert [f.path for f in chosen.files] == ["b", "c"]
    assert (chosen.new, chosen.replaced, chosen.deleted, chosen.already) == (["c"], {"b": "r1"}, {}, 1)
    assert chosen.covered_by == ["r1", "r2"]


def test_incremental_and_overwrite_exclude_each_other(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path), str(tmp_path / "o"), "--incremental", "--overwrite"])
    assert result.exit_code == 2 and "--overwrite would delete them" in result.output


def test_a_delta_compaction_of_labelled_files_is_not_labelled_again(tiny_model, scheduler, tmp_path):
    from deltalake import DeltaTable

    job = cli_job(tiny_model, scheduler)
    source, out = str(tmp_path / "reviews"), tmp_path / "out"
    flags = ["--incremental", "--input-format", "delta"]

    def append(ids: range) -> None:
        write_deltalake(source, pa.table({"id": list(ids), "text": [f"review {i}" for i in ids]}), mode="append")

    append(range(10))
    append(range(10, 15))
    assert job(source, out, *flags, "--run-id", "d1").exit_code == 0
    DeltaTable(source).optimize.compact()  # OPTIMIZE: one file of the 15 labelled rows (dataChange false)
    append(range(20, 24))
    second = job(source, out, *flags, "--run-id", "d2")
    assert second.exit_code == 0 and "gone from the input" not in second.output
    record = json.loads((out / "run_id=d2" / "_manifest.json").read_text())["input"]["incremental"]
    assert len(record["rewritten"]) == 1 and record["deleted"] == {} and record["already_labelled"] == 1
    assert labelled(out)["id"].to_pylist().count(3) == 1

    nothing = job(source, out, *flags, "--run-id", "d3")  # the compacted file counts as labelled from d2's record
    assert "nothing new to label" in nothing.output

    append(range(30, 32))
    DeltaTable(source).optimize.compact()  # takes in rows no run labelled: its file is labelled, never skipped
    fourth = job(source, out, *flags, "--run-id", "d4")
    assert fourth.exit_code == 0 and "2 input files gone from the input" in fourth.output
    latest = labelled(out).filter(pa.compute.equal(labelled(out)["run_id"], "d4"))
    assert sorted(latest["id"].to_pylist()) == [*range(15), *range(20, 24), 30, 31]


def test_a_rewrite_hands_coverage_on_only_when_every_file_it_replaced_was_labelled():
    from batchnlp.execution.incremental import select
    from batchnlp.io.tables.delta import Rewrite

    run = manifest("r1")
    run.input = {"files": [{"path": "a", "size": 1, "etag": None}, {"path": "b", "size": 2, "etag": None}]}
    compacted = Rewrite(2, frozenset({"a", "b"}), {"ab": 3})
    chosen = select([InputFile("ab", 3)], lambda path: path, [run], [compacted])
    assert (chosen.files, chosen.deleted, chosen.rewritten) == ([], {}, [{"path": "ab", "size": 3, "etag": None}])

    with_new = Rewrite(3, frozenset({"ab", "c"}), {"abc": 6})  # c was never labelled
    chosen = select([InputFile("abc", 6)], lambda path: path, [run], [compacted, with_new])
    assert [f.path for f in chosen.files] == ["abc"] and chosen.deleted == {"ab": "r1"}


def test_an_iceberg_input_labels_only_data_files_appended_since_the_last_run(tiny_model, scheduler, tmp_path):
    from batchnlp.io.tables.iceberg import load

    options = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "wh").as_uri()}
    catalog = load("lake", options)
    catalog.create_namespace("lake")
    rows = pa.table({"id": pa.array(range(6), pa.int64()), "text": [f"old {i}" for i in range(6)]})
    table = catalog.create_table("lake.reviews", rows.schema)
    table.append(rows)
    job = cli_job(tiny_model, scheduler)
    flags = ["--incremental", "--input-format", "iceberg", "--catalog", "lake"]
    flags += [f for k, v in options.items() for f in ("--catalog-option", f"{k}={v}")]
    out = tmp_path / "out"
    assert job("lake.reviews", out, *flags, "--run-id", "d1").exit_code == 0
    table.append(pa.table({"id": pa.array([6, 7], pa.int64()), "text": ["new 6", "new 7"]}))
    assert job("lake.reviews", out, *flags, "--run-id", "d2").exit_code == 0
    assert sorted(labelled(out)["id"].to_pylist()) == list(range(8))  # each row once over both runs
    recorded = json.loads((out / "run_id=d2" / "_manifest.json").read_text())["input"]
    assert recorded["table"]["snapshot_id"] == table.refresh().current_snapshot().snapshot_id
    assert recorded["incremental"]["already_labelled"] == 1 and len(recorded["files"]) == 1


def test_incremental_runs_over_s3_see_a_file_replaced_at_the_same_size(s3, bucket, tiny_model, scheduler):
    import s3fs

    def put(key: str, text: str) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=(json.dumps({"id": 1, "text": text}) + "\n").encode())

    put("in/a.jsonl", "good")
    put("in/b.jsonl", "fine")
    job = cli_job(tiny_model, scheduler)
    source, out = f"s3://{bucket}/in/", f"s3://{bucket}/out"
    assert job(source, out, "--incremental", "--run-id", "d1").exit_code == 0
    put("in/b.jsonl", "bad!")  # same size, another ETag
    put("in/c.jsonl", "new")
    second = job(source, out, "--incremental", "--run-id", "d2")
    assert second.exit_code == 0, second.output
    assert f"s3://{bucket}/in/b.jsonl (run d1)" in second.output
    record = json.loads(s3fs.S3FileSystem().cat_file(f"{bucket}/out/run_id=d2/_manifest.json"))["input"]
    assert sorted(f["path"].rsplit("/", 1)[1] for f in record["files"]) == ["b.jsonl", "c.jsonl"]
    assert record["incremental"]["replaced"] == {f"s3://{bucket}/in/b.jsonl": "d1"}
