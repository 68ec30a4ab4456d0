"""Every registered task (each way the conformance suite asks it), through the whole job as a user runs
it: a Delta table written with a label cache, a second night served entirely from that cache into an
Iceberg table, a run without deduplication beside it, the same run in two shards and one commit, and
``inspect`` and the report over the output.

The conformance suite holds each task to the unit contract; this holds the job's features to every
task: a new task joins by being registered (and given a tiny model in the suite's ``MODELS``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from click.testing import CliRunner
from deltalake import DeltaTable

from batchnlp.cli import main
from batchnlp.tasks import TASKS
from tests.conformance.test_distinct import assert_same_value
from tests.conformance.test_tasks import MODELS, QUESTION, SETTINGS
from tests.integration.io.test_tables import catalog_flags, load_catalog
from tests.support.helpers import invoke, write_jsonl

pytestmark = pytest.mark.cluster

TEXTS = [
    "The buyer, Acme Ltd, pays within thirty days.",
    "Maria Schmidt flew from Berlin to Lisbon for the Siemens meeting.",
    "",
    None,
    "ok",
    "The kettle broke after a week. " * 60,  # past a window
    "Ελληνικά και 日本語 😀 mixed with English words.",
]


def records() -> list[dict]:
    """Every text three times: a night's repeats, each with the question a qa task reads."""
    return [{"id": i, "text": TEXTS[i % len(TEXTS)], "question": QUESTION} for i in range(3 * len(TEXTS))]


def spec_file(tmp_path: Path, settings: dict, model: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"tasks": [{**settings, "model": str(model)}], "id_column": "id"}))
    return path


def table_rows(out: Path, column: str) -> list:
    table = ds.dataset(str(out), format="parquet").to_table().sort_by("id")
    return table.column(column).to_pylist()


def dedup(out: Path, name: str) -> dict:
    return json.loads((out / "_manifest.json").read_text())["totals"]["dedup"][name]


@pytest.mark.parametrize("key", list(SETTINGS))
def test_a_task_runs_through_the_label_cache_tables_shards_and_inspect(key, tmp_path, request, scheduler):
    settings = SETTINGS[key]
    model = request.getfixturevalue(MODELS[TASKS[settings["task"]].target])
    name, spec = settings["name"], spec_file(tmp_path, settings, model)
    source, cache = write_jsonl(tmp_path / "in.jsonl", records()), tmp_path / "cache"
    common = ["--spec", spec, "--scheduler", scheduler, "--workers", "1", "--label-cache", cache]

    first = invoke(source, tmp_path / "delta", *common, "--output-format", "delta", "--run-id", "night-1")
    assert first.exit_code == 0, first.output
    iceberg = ["--output-format", "iceberg", *catalog_flags(str(tmp_path), tmp_path), "--run-id", "night-2"]
    second = invoke(source, "lake.labels", *common, *iceberg)
    assert second.exit_code == 0, second.output
    plain = invoke(source, tmp_path / "plain", "--spec", spec, "--scheduler", scheduler, "--workers", "1", "--no-dedup")
    assert plain.exit_code == 0, plain.output

    served = next((tmp_path / "warehouse").rglob("batchnlp-runs/night-2/_manifest.json")).parent
    figures = dedup(served, name)
    assert figures["run"] == 0 and figures["cached"] == figures["distinct"] > 0, "the second night ran no model"
    expected = table_rows(tmp_path / "plain", name)
    delta = DeltaTable(str(tmp_path / "delta")).to_pyarrow_table().sort_by("id").column(name).to_pylist()
    # The snapshot's own data files: pyiceberg's reader (0.12) turns a null list<struct> into []
    # (apache/iceberg-python#3833); the files hold the nulls, as Spark, Trino and DuckDB read them.
    files = [
        task.file.file_path
        for task in load_catalog(str(tmp_path), tmp_path).load_table("lake.labels").scan().plan_files()
    ]
    lake = ds.dataset([f.removeprefix("file://") for f in files], format="parquet").to_table().sort_by("id")
    for rows in (delta, lake.column(name).to_pylist()):
        for a, b in zip(rows, expected, strict=True):
            assert_same_value(a, b)

    sharded = tmp_path / "sharded"
    for index in range(2):
        shard = ["--rows-per-partition", "7", "--shard", f"{index}/2", "--run-id", "night-3"]
        result = invoke(source, sharded, "--spec", spec, "--scheduler", scheduler, "--workers", "1", *shard)
        assert result.exit_code == 0, result.output
    committed = CliRunner().invoke(main, ["commit", str(sharded), "--run-id", "night-3"])
    assert committed.exit_code == 0, committed.output
    for a, b in zip(table_rows(sharded, name), expected, strict=True):
        assert_same_value(a, b)

    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "plain"), "--rows", "3"])
    assert shown.exit_code == 0 and "Traceback" not in shown.output, shown.output
    report = json.loads((tmp_path / "plain" / "_report.json").read_text())["tasks"][name]
    assert report["annotated"] == sum(v is not None for v in expected)
