"""The reported case: a 60-row JSONL file of long QA contexts on two workers was cut into three
units, the last one byte long and rowless; the QA job then failed (``array_take`` of string and
null types) and a sentiment job wrote an empty part and estimated 90 rows for 60."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from batchnlp.cli import main

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

ROWS = 60


def write_contexts(path) -> None:
    """60 lines of 889 bytes, one of 888: the sampled average times 30 rows fell 1 byte short of half."""
    lines = []
    for i in range(ROWS):
        record = {"id": i, "question": "Who shall deliver the goods?", "text": ""}
        padding = 889 - 1 - len(json.dumps(record)) - (1 if i == 0 else 0)
        record["text"] = ("the seller shall deliver the goods " * 30)[:padding]
        lines.append(json.dumps(record))
    path.write_text("".join(line + "\n" for line in lines))
    assert path.stat().st_size == 53_339


@pytest.mark.parametrize("task", ["qa", "sentiment"])
def test_long_contexts_on_two_workers_make_no_empty_unit(tmp_path, qa_model, tiny_model, task):
    source = tmp_path / "contexts.jsonl"
    write_contexts(source)
    model = qa_model if task == "qa" else tiny_model
    flags = ["--task", task, "--model", f"{task}={model}", "--workers", "2", "--log-format", "json"]
    if task == "qa":
        flags += ["--question-column", "question"]
    result = CliRunner().invoke(main, ["run", str(source), str(tmp_path / "out"), *flags])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert next(e for e in events if e["event"] == "job_start")["rows_estimate"] == ROWS
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [part["rows"] > 0 for part in manifest["parts"]] == [True] * len(manifest["parts"])
    assert manifest["totals"]["rows_out"] == ROWS and manifest["totals"]["rejected"] == 0


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet"])
def test_an_empty_input_commits_an_empty_output(tmp_path, tiny_model, name):
    """A night whose input file is empty still ends in a commit (downstream jobs wait on _SUCCESS),
    not in an incremental run's "nothing new" exit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), source)
    else:
        source.write_text("")
    out = tmp_path / "out"
    flags = ["--task", "sentiment", "--model", f"sentiment={tiny_model}", "--workers", "1"]
    result = CliRunner().invoke(main, ["run", str(source), str(out), *flags])
    assert result.exit_code == 0, result.output
    assert "nothing new" not in result.output
    assert (out / "_SUCCESS").exists()
    totals = json.loads((out / "_manifest.json").read_text())["totals"]
    assert totals["rows_in"] == totals["rows_out"] == totals["parts"] == 0
