"""The task registry: a literal table of task kinds, their code (imported lazily) and defaults.

A new task is one module in this package with a ``Task`` subclass (its ``preprocess``, ``forward``
and ``postprocess`` steps: :class:`batchnlp.tasks.base.Task` says which are optional), plus one
entry here: its code, default model, output type and how people see its column
(:mod:`batchnlp.tasks.summaries`).

May import: :mod:`batchnlp.inference`, :mod:`batchnlp.io`, :mod:`batchnlp.util`, :mod:`batchnlp.errors`.
A task reads its :class:`~batchnlp.spec.TaskSpec` as a type only: the spec sits above the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from batchnlp.tasks.columns import ERROR_COLUMN, answer_type, embedding_type, entity_type, label_type, zero_shot_type
from batchnlp.tasks.summaries import ANSWERS, EMBEDDINGS, ENTITIES, LABELS, ZERO_SHOT, Summary

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec
    from batchnlp.tasks.base import Task

# A cascade's teacher labels the rows whose best two student scores are closer than this (--cascade-margin).
# The margin batchnlp distill calibrated for the distill benchmark's 3-layer student of a 6-layer DistilBERT-base
# (docs/distill.md): 99.52% of the teacher's labels on its 415 held-out rows with 12% of them to the teacher, and
# 99.50% on 2,000 fresh rows (14.2% to the teacher, 0.70x the teacher's time). A distilled student is sure of
# itself: at 0.2 it kept 97.1%. Like int8's rescore margin, the default errs on the side of the teacher's
# labels; distill prints the margin of a student of one's own.
DEFAULT_CASCADE_MARGIN = 0.75
# ner (--aggregation): transformers' token-classification pipeline's aggregation strategies, by the same names.
AGGREGATIONS = ("simple", "first", "average", "max", "none")
DEFAULT_AGGREGATION = "simple"  # entity groups, as most NER model cards show them (the pipeline's own default is none)
DEFAULT_HYPOTHESIS = "This example is {}."  # zero-shot's --hypothesis: the pipeline's hypothesis_template


@dataclass(frozen=True)
class TaskInfo:
    """What the spec needs to know without importing torch."""

    target: str
    default_model: str | None
    supports_top_k: bool
    help: str
    output_type: Callable[[TaskSpec], pa.DataType]  # the task's output column, from its spec alone
    summary: Summary  # how the report and inspect show the column (batchnlp.tasks.summaries)
    takes_question: bool = False  # qa: --question / --question-column and the span settings
    keeps_probs: bool = False  # classifiers: --keep-probs writes every label's probability (batchnlp distill)
    cascades: bool = False  # classifiers: --cascade TASK=STUDENT, the teacher labelling the student's close calls
    embeds: bool = False  # embed: --embed-dtype float32|float16
    names_entities: bool = False  # ner: --aggregation, --entities, --redact
    # A task whose one value per row is a struct written as several columns, where this says so for a spec (ner
    # --redact): the struct's first field is the task's column, each other field the column <task>_<field>.
    # Deduplication and the label cache keep the one value; only the written part is spread.
    spreads: Callable[[TaskSpec], bool] | None = None
    takes_labels: bool = False  # zero-shot: --labels (required), --hypothesis, --multi-label

    def load(self) -> type[Task]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


TASKS: dict[str, TaskInfo] = {
    "sentiment": TaskInfo(
        target="batchnlp.tasks.classify:Classify",
        default_model="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        supports_top_k=False,
        help="positive/negative sentiment (SST-2 DistilBERT by default)",
        output_type=label_type,
        summary=LABELS,
        keeps_probs=True,
        cascades=True,
    ),
    "classify": TaskInfo(
        target="batchnlp.tasks.classify:Classify",
        default_model=None,
        supports_top_k=True,
        help="any sequence-classification checkpoint; --top-k N keeps the N best labels",
        output_type=label_type,
        summary=LABELS,
        keeps_probs=True,
        cascades=True,
    ),
    "qa": TaskInfo(
        target="batchnlp.tasks.qa:QuestionAnswering",
        default_model="distilbert/distilbert-base-cased-distilled-squad",
        supports_top_k=False,
        help="extractive question answering: the span of the text that answers --question or --question-column",
        output_type=answer_type,
        summary=ANSWERS,
        takes_question=True,
    ),
    "embed": TaskInfo(
        target="batchnlp.tasks.embed:Embed",
        default_model="sentence-transformers/all-MiniLM-L6-v2",
        supports_top_k=False,
        help="sentence embeddings (fixed_size_list<float32>[dim]), pooled as the checkpoint's sentence-transformers "
        "files say (mean pooling by default); --embed-dtype float16 halves them",
        output_type=embedding_type,
        summary=EMBEDDINGS,
        embeds=True,
    ),
    "ner": TaskInfo(
        target="batchnlp.tasks.ner:NamedEntities",
        default_model="dslim/distilbert-NER",
        supports_top_k=False,
        help="named entities (any token-classification checkpoint): list<struct<entity, score, start, end, word>> "
        "per row, grouped as --aggregation says; --entities keeps some types, --redact also writes the text with "
        "each entity replaced by [TYPE]",
        output_type=entity_type,
        summary=ENTITIES,
        names_entities=True,
        spreads=lambda spec: spec.redact,
    ),
    "zero-shot": TaskInfo(
        target="batchnlp.tasks.zero_shot:ZeroShot",
        default_model=None,
        supports_top_k=False,
        help="NLI-based zero-shot classification over --labels (any NLI sequence classifier, one forward pass "
        "per label), scored as transformers' zero-shot-classification pipeline; --hypothesis, --multi-label",
        output_type=zero_shot_type,
        summary=ZERO_SHOT,
        keeps_probs=True,
        takes_labels=True,
    ),
}


def output_schema(input_schema: pa.Schema, tasks: tuple[TaskSpec, ...]) -> pa.Schema:
    """Every part's columns: the input's (partition keys included), each task's in order, then ``_error``."""
    schema = input_schema
    for task in tasks:
        for field in task_fields(task, TASKS[task.kind].output_type(task)):
            schema = schema.append(field)
    return schema.append(ERROR_COLUMN)


def task_fields(task: TaskSpec, kind: pa.DataType) -> list[pa.Field]:
    """The columns a task writes, its value being of type ``kind``: one named after the task, or a spread
    struct's fields (:attr:`TaskInfo.spreads`), the first named after the task, the others ``<task>_<field>``."""
    if not _spreads(task):
        return [pa.field(task.name, kind)]
    return [pa.field(task.name if i == 0 else f"{task.name}_{f.name}", f.type) for i, f in enumerate(kind)]


def column_names(task: TaskSpec) -> list[str]:
    """The names of the columns a task writes (:func:`task_fields`), from its spec alone: a task that writes
    one column needs no type for its name (an embedding's would read the checkpoint's config)."""
    if not _spreads(task):
        return [task.name]
    return [field.name for field in task_fields(task, TASKS[task.kind].output_type(task))]


def _spreads(task: TaskSpec) -> bool:
    """Whether the task's value is written as several columns (:attr:`TaskInfo.spreads`)."""
    spreads = TASKS[task.kind].spreads
    return spreads is not None and spreads(task)


def task_columns(task: TaskSpec, kind: pa.DataType, values: pa.Array) -> list[tuple[pa.Field, pa.Array]]:
    """The written columns of a task's values (:func:`task_fields`); a null value is null in each of them."""
    fields = task_fields(task, kind)
    if len(fields) == 1:
        return [(fields[0], values)]
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return list(zip(fields, values.flatten(), strict=True))  # flatten: the struct's nulls in every child
