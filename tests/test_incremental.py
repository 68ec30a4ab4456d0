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
from batchnlp.storage import InputFile
from tests.helpers import cli_job, manifest, write_jsonl


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
    from batchnlp.incremental import select

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
