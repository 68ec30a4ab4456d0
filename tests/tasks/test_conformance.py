"""Every registered task, held to one contract through the worker's own unit function
(``batchnlp.worker.annotate_unit``): units of 0 rows, 1 row, all-null texts, all-blank texts,
mixed lengths (one row far over the window) and 10,000 rows.

Every input row is in the part, in order; a row a task cannot annotate has a null in its column
and a reason in ``_error``; the column has the type the registry promises; and the summary the
report and ``inspect`` use reads it. A new task inherits the suite by being registered (add its
settings to ``SETTINGS``). The 0-row unit is a real case: a QA job failed on one
(``ArrowNotImplementedError: array_take`` of string and null types).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.formats import ReadOptions, WorkUnit
from batchnlp.output import open_output
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.stats import merge
from batchnlp.storage import Location
from batchnlp.tasks import TASKS
from batchnlp.worker import ModelPlugin, ModelSettings, UnitJob, annotate_unit

# How each registered task kind is run here: its spec (the model filled in per test session).
SETTINGS = {
    "sentiment": [{"name": "sentiment", "kind": "sentiment"}],
    "classify": [{"name": "topics", "kind": "classify", "top_k": 2}],
    "qa": [
        {"name": "answer", "kind": "qa", "question_column": "question", "max_answer_length": 15},
        {"name": "answer", "kind": "qa", "question": "Who pays?", "max_answer_length": 15},
    ],
}
SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("question", pa.string())])
HUGE = "the buyer pays the seller within thirty days of delivery " * 400  # ~4,000 tokens: many windows
UNITS = {
    "no rows": [],
    "one row": ["The buyer, Acme Ltd, pays within thirty days."],
    "all null": [None] * 5,
    "all blank": ["", "   ", "\t\n"] * 2,
    "mixed lengths": ["ok", None, "a longer sentence about the goods and who pays for them", HUGE, " ", "fine"],
    "10,000 rows": [f"row {i}: the seller delivers" + " goods" * (i % 9) for i in range(10_000)],
}
CASES = [
    pytest.param(kind, settings, unit, id=f"{kind}{'-fixed' if 'question' in settings else ''}-{unit}")
    for kind, variants in SETTINGS.items()
    for settings in variants
    for unit in UNITS
]


def test_every_registered_task_is_in_the_suite():
    assert set(SETTINGS) == set(TASKS)


@pytest.fixture(scope="module")
def plugins(tiny_model: Path, qa_model: Path):
    """One loaded ModelPlugin per task settings, as a worker holds them."""
    loaded = {}
    for variants in SETTINGS.values():
        for settings in variants:
            model = qa_model if settings["kind"] == "qa" else tiny_model
            spec = TaskSpec(model=str(model), **settings)
            plugin = ModelPlugin(ModelSettings((spec,), "cpu", "fp32", 4096, None, 1, {}))
            plugin.load()
            loaded[json.dumps(settings, sort_keys=True)] = plugin
    return loaded


@pytest.mark.parametrize("kind, settings, unit_name", CASES)
def test_a_task_accounts_for_every_row_of_any_unit(tmp_path, plugins, kind, settings, unit_name):
    texts = UNITS[unit_name]
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": t, "question": "Who pays?"}) + "\n" for i, t in enumerate(texts))
    )
    plugin = plugins[json.dumps(settings, sort_keys=True)]
    spec = JobSpec.from_settings({"input": str(source), "output": str(tmp_path / "out"), "run_id": "conformance"})
    output = open_output(spec).prepare()
    job = UnitJob(Location(str(source), {}), ReadOptions(), "id", SCHEMA, plugin.settings.plugin_name, output)
    unit = WorkUnit(0, source.as_uri(), "jsonl", 0, source.stat().st_size, len(texts))

    result = annotate_unit(unit, job, plugin)

    bad = [i for i, t in enumerate(texts) if t is None or not t.strip()]
    assert (result.rows_in, result.rows_out, result.rejected) == (len(texts), len(texts), len(bad))
    name = settings["name"]
    if not texts:
        assert result.part == "" and result.bytes == 0, "a unit without rows writes no part"
        assert result.task_stats[name]["annotated"] == 0
        return
    part = pq.read_table(result.part.removeprefix("file://"))
    assert part.column("id").to_pylist() == list(range(len(texts))), "every row, in input order"
    task_spec = plugin.settings.tasks[0]
    assert part.schema.field(name).type == TASKS[kind].output_type(task_spec)
    values, errors = part.column(name).to_pylist(), part.column("_error").to_pylist()
    assert [i for i, v in enumerate(values) if v is None] == bad
    assert [i for i, e in enumerate(errors) if e is not None] == bad
    assert all(errors[i].startswith("text is") for i in bad)
    summary = TASKS[kind].summary
    figures = summary.figures(merge([result.task_stats[name]]))
    assert isinstance(figures, dict) and result.task_stats[name]["annotated"] == len(texts) - len(bad)
    assert all(isinstance(summary.cell(v), str) for v in values if v is not None)
