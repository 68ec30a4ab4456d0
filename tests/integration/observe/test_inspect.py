"""`batchnlp inspect OUTPUT`: the summary of a committed run, of an interrupted one, and a few rows."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from batchnlp.cli import main
from batchnlp.ledger.record import Totals
from batchnlp.observe.inspection import RunInfo, rows_table
from tests.support.helpers import write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves


def inspect(*args: str):
    result = CliRunner().invoke(main, ["inspect", *map(str, args)])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model) -> Path:
    """One real run: 3 units of 20 rows, two rows rejected, an id column."""
    root = tmp_path_factory.mktemp("inspect")
    rows = [{"review_id": f"r{i:03d}", "text": f"review number {i}, " + "very long text " * 10} for i in range(60)]
    rows[5]["text"] = None
    rows[45]["text"] = "  "
    source = write_jsonl(root / "in.jsonl", rows)
    result = CliRunner().invoke(
        main,
        ["run", str(source), str(root / "out"), "--model", f"sentiment={tiny_model}", "--workers", "1",
         "--rows-per-partition", "20", "--id-column", "review_id", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "out"


def interrupted_copy(finished: Path, dest: Path) -> Path:
    """The run as if it had died before its commit, with its first unit not done yet."""
    shutil.copytree(finished, dest)
    (dest / "_SUCCESS").unlink()
    (dest / "_manifest.json").unlink()
    (dest / "_progress" / "part-00000.json").unlink()
    return dest


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def test_finished_run_summary(finished):
    result = inspect(finished)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "status     committed 20" in out
    assert "run        20" in out and "in.jsonl" in out and f"file://{finished}" in out
    assert "task       sentiment (sentiment):" in out and "version sha256:" in out
    assert "device     cpu, fp32" in out
    assert "rows       60 in, 60 out, 2 rejected" in out
    assert "1 text is null" in out and "1 text is empty or whitespace" in out
    assert "rows/s" in out and "tokens/s" in out
    parts = sorted(p.name for p in finished.glob("part-*.parquet"))
    assert len(parts) >= 2 and f"parts      {len(parts)} files" in out and parts[-1] in out


def test_interrupted_run_summary(finished, tmp_path):
    out_dir = interrupted_copy(finished, tmp_path / "out")
    result = inspect(out_dir)
    assert result.exit_code == 0, result.output
    parts = manifest(finished)["parts"]
    done = len(parts) - 1
    assert f"INTERRUPTED: {done} of {len(parts)} units committed" in result.output and "--resume" in result.output
    assert "task       sentiment (sentiment):" in result.output
    rows = sum(p["rows"] for p in parts[1:])
    assert f"rows       {rows} in, {rows} out" in result.output


def test_a_run_whose_owner_still_holds_the_lock_is_running(finished, tmp_path):
    out_dir = interrupted_copy(finished, tmp_path / "out")
    run_id = json.loads((out_dir / "_progress" / "_job.json").read_text())["run_id"]
    lock = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": time.time()}
    (out_dir / "_lock.json").write_text(json.dumps(lock))
    units = len(manifest(finished)["parts"])
    assert f"RUNNING: {units - 1} of {units} units committed so far" in inspect(out_dir).output
    os.utime(out_dir / "_lock.json", (time.time() - 3600, time.time() - 3600))  # the store's clock decides
    assert f"INTERRUPTED: {units - 1} of {units} units" in inspect(out_dir).output, "an unrenewed lock's owner is gone"


def test_rows_table(finished):
    result = inspect(finished, "--rows", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "review_id" in line)
    assert "text" in header and "sentiment" in header and "_error" in header
    body = [line for line in lines if "r00" in line]
    assert [line.split()[1] for line in body] == ["r000", "r001", "r002"]  # first rows, in order
    assert all("(0." in line or "(1." in line for line in body)  # label (score)
    assert all("…" in line for line in body)  # long text cut
    assert "r003" not in result.output


def test_not_a_run_is_a_usage_error(tmp_path):
    result = inspect(tmp_path)
    assert result.exit_code == 2 and "holds no batchnlp run" in result.output


def test_interrupted_run_on_s3(finished, tmp_path, s3, bucket):
    out_dir = interrupted_copy(finished, tmp_path / "out")
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"labelled/{path.relative_to(out_dir)}")
    result = inspect(f"s3://{bucket}/labelled", "--rows", "2")
    assert result.exit_code == 0, result.output
    assert "INTERRUPTED" in result.output and f"s3://{bucket}/labelled" in result.output
    first = manifest(finished)["parts"][0]["rows"]  # the first unit is not done: its rows are not shown
    assert f"r{first:03d}" in result.output and f"r{first + 1:03d}" in result.output and "r000" not in result.output


def rendered(info: RunInfo, rows: list[dict]) -> str:
    console = Console(width=120, file=io.StringIO(), record=True)
    console.print(rows_table(info, rows, console.width))
    return console.export_text()


def run_info(models: dict, spec: dict) -> RunInfo:
    return RunInfo(output="out/", status="committed", run_id="r", spec=spec, models=models, totals=Totals(), parts=[])


ROW = {
    "text": "the buyer pays",
    "mood": {"label": "pos", "score": 0.9},
    "aspects": {"label": ["price", "service"], "score": 0.5},
    "payer": {"answer": "", "score": 0.1, "start": 0, "end": 0},
    "_error": None,
}


def test_rows_table_shows_each_value_as_its_task_kind_summarises_it():
    models = {"mood": {"task": "sentiment"}, "aspects": {"task": "classify"}, "payer": {"task": "qa"}}
    line = next(line for line in rendered(run_info(models, {}), [ROW]).splitlines() if "buyer" in line)
    assert [cell.strip() for cell in line.split("│")[2:5]] == ["pos (0.90)", "price, service (0.50)", "'' (0.10)"]


def test_rows_table_of_a_manifest_without_models_takes_the_tasks_from_its_spec():
    spec = {"tasks": [{"name": "mood", "kind": "sentiment", "model": "m"}]}
    table = rendered(run_info({}, spec), [ROW])
    assert "mood" in table and "pos (0.90)" in table and "payer" not in table


def test_rows_show_markup_as_written_and_no_terminal_control(tmp_path, tiny_model):
    """Cell text is data: ``[/x]`` once crashed inspect (rich read it as a closing tag), and an ANSI
    escape or a bell in a review reached the terminal as is."""
    rows = [
        {"review_id": "r0", "text": "closing [/x] tag"},
        {"review_id": "r1", "text": "[bold red]loud[/bold red]"},
        {"review_id": "r2", "text": "\x1b[2J\x1b[31mred\x1b[0m\x07 and \x1b]0;pwned\x07title"},
    ]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", str(write_jsonl(tmp_path / "in.jsonl", rows)), str(out), "--model", f"sentiment={tiny_model}",
         "--workers", "1", "--id-column", "review_id", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = inspect(out, "--rows", "3")
    assert result.exit_code == 0, result.output
    assert "closing [/x] tag" in result.output
    assert "[bold red]loud[/bold red]" in result.output
    assert "red and title" in result.output
    assert not any(char in result.output for char in "\x1b\x07")
