"""Every registered task, held to one contract through the worker's own unit function
(``batchnlp.execution.worker.annotate_unit``): units of 0 rows, 1 row, all-null texts, all-blank texts,
mixed lengths (one row far over the window) and 10,000 rows, read from JSONL and from Parquet.

Every input row is in the part, in order; a row a task cannot annotate has a null in its column
and its reason in ``_error``; the column has the type the registry promises; and the report and
``inspect`` summarise it through the task's summary. A task is run as its registry entry says it
can be (``top_k``, a question column or a fixed question), so a new task kind joins the suite by
being registered; a new task class also needs a tiny model in ``MODELS``. The 0-row unit is a
real case: a QA job failed on one (``ArrowNotImplementedError: array_take`` of string and null).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.execution.worker import ModelPlugin, UnitJob, annotate_unit
from batchnlp.io.formats import ReadOptions, WorkUnit, plan_units
from batchnlp.io.storage import InputFile, Location
from batchnlp.ledger.output import open_output
from batchnlp.ledger.record import PartResult, Totals
from batchnlp.ledger.report import build_report, render_html
from batchnlp.observe.inspection import RunInfo, rows_table
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks import TASKS, TaskInfo, task_fields
from tests.support.helpers import manifest, write_jsonl

# The tiny random model (a fixture of tests/conftest.py) each task class is run with here.
MODELS = {
    "batchnlp.tasks.classify:Classify": "tiny_model",
    "batchnlp.tasks.qa:QuestionAnswering": "qa_model",
    "batchnlp.tasks.embed:Embed": "embed_model",
    "batchnlp.tasks.ner:NamedEntities": "ner_model",
    "batchnlp.tasks.zero_shot:ZeroShot": "zero_shot_model",
}
QUESTION = "Who pays?"
SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("question", pa.string())])
HUGE = "the buyer pays the seller within thirty days of delivery " * 400  # ~4,000 tokens: far over any window
UNITS = {
    "no-rows": [],
    "one-row": ["The buyer, Acme Ltd, pays within thirty days."],
    "all-null": [None] * 5,
    "all-blank": ["", "   ", "\t\n"] * 2,
    "mixed-lengths": ["ok", None, "a longer sentence about the goods and who pays for them", HUGE, " ", "fine"],
    "10000-rows": [f"row {i}: the seller delivers" + " goods" * (i % 9) for i in range(10_000)],
}
FORMATS = ("jsonl", "parquet")


def variants(info: TaskInfo) -> dict[str, dict]:
    """The settings, beyond its model, a task kind is run with: each way its registry entry says it can be asked."""
    if info.takes_question:
        return {"question-column": {"question_column": "question"}, "fixed-question": {"question": QUESTION}}
    if info.supports_top_k:
        return {"top-k": {"top_k": 2}}
    if info.embeds:
        return {"": {}, "chunked": {"chunk_tokens": 16, "chunk_stride": 4}}
    if info.names_entities:
        return {"simple": {"aggregation": "simple"}, "redact": {"aggregation": "first", "redact": True}}
    if info.takes_labels:
        labels = ["sports", "politics", "business"]
        return {"single-label": {"labels": labels}, "multi-label": {"labels": labels[:2], "multi_label": True}}
    return {"": {}}


SETTINGS = {
    "-".join(filter(None, (kind, variant))): {"name": kind, "task": kind, **settings}
    for kind, info in TASKS.items()
    for variant, settings in variants(info).items()
}


def expected_error(text: str | None) -> str | None:
    """The worker's reason for a text it cannot annotate, as a user reads it in ``_error``."""
    if text is None:
        return "text is null"
    return None if text.strip() else "text is empty or whitespace"


def test_every_task_class_has_a_test_model():
    assert {info.target for info in TASKS.values()} <= set(MODELS)


def write_input(directory: Path, texts: list[str | None], fmt: str) -> Path:
    records = [{"id": i, "text": text, "question": QUESTION} for i, text in enumerate(texts)]
    if fmt == "jsonl":
        return write_jsonl(directory / "in.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records, SCHEMA), directory / "in.parquet")
    return directory / "in.parquet"


def whole_file_unit(source: Path, fmt: str, rows: int) -> WorkUnit:
    """The one unit the planner cuts a file into when a unit has room for all of it (a JSONL file's
    rows are estimated from a sample); a file without rows plans none, so its unit is an empty range."""
    location = Location(str(source), {})
    file = InputFile(str(source), source.stat().st_size)
    units = plan_units(location, [file], fmt, 1_000_000, ReadOptions(), workers=1).units
    assert len(units) == (1 if rows else 0)
    return units[0] if units else WorkUnit(index=0, path=source.as_uri(), format=fmt, start=0, stop=0, rows=0)


def run_unit(directory: Path, texts: list[str | None], fmt: str, plugin: ModelPlugin) -> PartResult:
    source = write_input(directory, texts, fmt)
    spec = JobSpec.from_settings({"input": str(source), "output": str(directory / "out"), "run_id": "conformance"})
    output = open_output(spec).prepare()
    job = UnitJob(Location(str(source), {}), ReadOptions(), "id", SCHEMA, plugin.settings.plugin_name, output)
    return annotate_unit(whole_file_unit(source, fmt, len(texts)), job, plugin)


CASES = [
    pytest.param(key, unit, fmt, id=f"{key}-{unit}-{fmt}") for key in SETTINGS for unit in UNITS for fmt in FORMATS
]


@pytest.mark.parametrize("settings_key, unit_name, fmt", CASES)
def test_a_task_accounts_for_every_row_of_any_unit(tmp_path, plugins, settings_key, unit_name, fmt):
    texts, plugin = UNITS[unit_name], plugins[settings_key]
    task = plugin.settings.tasks[0]
    info = TASKS[task.kind]

    result = run_unit(tmp_path, texts, fmt, plugin)

    errors = [expected_error(text) for text in texts]
    annotated = errors.count(None)
    assert (result.rows_in, result.rows_out, result.rejected) == (len(texts), len(texts), len(texts) - annotated)
    assert result.reasons == dict(Counter(error for error in errors if error is not None))
    if texts:
        part = pq.read_table(result.part.removeprefix("file://"))
        assert part.column("id").to_pylist() == list(range(len(texts))), "every row, in input order"
        written = task_fields(task, info.output_type(task))
        assert [part.schema.field(field.name).type for field in written] == [field.type for field in written]
        values = part.column(task.name).to_pylist()
        for field in written[1:]:  # a spread value's other columns (ner --redact): null where the task's is
            assert [value is None for value in part.column(field.name).to_pylist()] == [v is None for v in values]
        assert [value is None for value in values] == [error is not None for error in errors]
        assert part.column("_error").to_pylist() == errors
        assert all(isinstance(info.summary.cell(value), str) for value in values if value is not None)
        run = RunInfo("out/", "committed", "conformance", {"id_column": "id"}, record(task), Totals(), [])
        shown = rows_table(run, part.slice(0, 5).to_pylist())
        assert [str(column.header) for column in shown.columns] == ["id", "text", task.name, "_error"]
        if info.names_entities and task.redact:
            redacted = part.column(f"{task.name}_redacted").to_pylist()
            assert all(isinstance(text, str) for text, error in zip(redacted, errors, strict=True) if error is None)
    else:
        assert result.part == "" and result.bytes == 0, "a unit without rows writes no part"

    figures = report_figures(task, result)
    assert figures["annotated"] == annotated
    # Each annotated row in the score histogram; ner's counts the rows with entities (by their least sure one).
    assert sum(figures["scores"]["counts"]) == figures.get("rows_with_entities", annotated)


def record(task: TaskSpec) -> dict[str, dict]:
    """The task as a run's manifest records it, which is all the report and ``inspect`` know of it."""
    return {task.name: {"task": task.kind, "ref": task.model, "version": None}}


def report_figures(task: TaskSpec, result: PartResult) -> dict:
    """The task's figures in the report of this one unit, once the page shows them."""
    report = build_report(dataclasses.replace(manifest("conformance", [result]), models=record(task)), [result])
    page, section = render_html(report), TASKS[task.kind].summary.section
    if section is not None:
        assert f'<section id="{task.kind}">' in page
        assert all(key in report["tasks"][task.name] for key, _ in section.columns)
    return report["tasks"][task.name]
