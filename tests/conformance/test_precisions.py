"""Every registered task (each way the conformance suite asks it) at every precision and backend a CPU
runs: bf16 and int8 on torch, fp32 and int8 on onnxruntime (which runs a model it does not export on
torch). Each gives the column the registry promises, for every row, with the same structure as fp32 on
torch (labels, spans and entity lists may move with the precision; their shape may not)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchnlp.execution.worker import ModelPlugin, ModelSettings
from batchnlp.spec import JobSpec
from batchnlp.tasks import TASKS, task_fields
from tests.conformance.test_tasks import HUGE, MODELS, QUESTION, SETTINGS

TEXTS = ["The buyer, Acme Ltd, pays within thirty days.", "ok", HUGE, "Ελληνικά 😀 and English"]
RUNS = [("torch", "bf16"), ("torch", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def annotate(request: pytest.FixtureRequest, key: str, backend: str, precision: str) -> tuple[pa.Array, object]:
    settings = SETTINGS[key]
    model = request.getfixturevalue(MODELS[TASKS[settings["task"]].target])
    job = {"input": "in.jsonl", "output": "out/", "tasks": [{**settings, "model": str(model)}]}
    spec = JobSpec.from_settings(job).tasks[0]
    plugin = ModelPlugin(
        ModelSettings(
            tasks=(spec,), device="cpu", precision=precision, tokens_per_batch=2048, max_length=None, threads=1,
            storage_options={}, backend=backend,
        )
    )  # fmt: skip
    plugin.load()
    task = plugin.tasks[spec.name]
    rows = pa.table({"question": [QUESTION] * len(TEXTS)}) if task.input_columns else None
    column, _ = task.annotate(TEXTS, rows)
    return column, task


def shape(value: object) -> object:
    """A value's structure: list lengths and struct keys, not the numbers or strings in them."""
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


@pytest.mark.parametrize("key", list(SETTINGS))
def test_every_precision_gives_the_promised_column(request, key):
    reference, task = annotate(request, key, "torch", "fp32")
    for backend, precision in RUNS:
        column, run = annotate(request, key, backend, precision)
        assert column.type == task.output_type, (backend, precision)
        assert [field.type for field in task_fields(run.spec, column.type)] == [
            field.type for field in task_fields(task.spec, reference.type)
        ]
        values = column.to_pylist()
        assert len(values) == len(TEXTS) and all(value is not None for value in values)
        if TASKS[task.spec.kind].names_entities:
            continue  # entities found may differ in number at another precision
        assert [shape(v) for v in values] == [shape(v) for v in reference.to_pylist()], (backend, precision)
