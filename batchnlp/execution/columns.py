"""The output's columns as the driver types them, before any worker has loaded a model.

Most task columns have one type whatever the checkpoint; an embedding's length is the encoder's
hidden size, so the driver reads it from the checkpoint's small files (``config.json`` and the
sentence-transformers settings), fetched without the weights as ``batchnlp plan`` fetches a
tokenizer (:func:`batchnlp.execution.estimate.tokenizer_directory`). A table output then checks, and
creates, a ``fixed_size_list<float32>[dim]`` column whatever the model's ref: a local directory, an
object-store prefix or a Hub id.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pyarrow as pa

from batchnlp.execution.estimate import tokenizer_directory
from batchnlp.inference.models.refs import parse_ref
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks import TASKS, output_schema


def typed_output_schema(spec: JobSpec, input_schema: pa.Schema) -> pa.Schema:
    """The input's columns, each task's column (an embedding's with its checkpoint's dimension), ``_error``."""
    with tempfile.TemporaryDirectory(prefix="batchnlp-columns-") as scratch:
        tasks = tuple(_typed(task, spec, Path(scratch)) for task in spec.tasks)
        return output_schema(input_schema, tasks)


def _typed(task: TaskSpec, spec: JobSpec, scratch: Path) -> TaskSpec:
    """``task``, its model a local directory of the checkpoint's small files where its column's type needs them."""
    if not TASKS[task.kind].embeds or parse_ref(task.model).kind == "local":
        return task
    return dataclasses.replace(task, model=str(tokenizer_directory(task.model, spec.storage_options, scratch)))
