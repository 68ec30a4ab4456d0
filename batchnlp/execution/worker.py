"""What runs on a Dask worker: the plugin that owns the loaded models, and the unit function.

Models are loaded in ``WorkerPlugin.setup``, which Dask runs on every worker present at
registration and on every worker that joins or restarts later. They are never pickled
through the scheduler: only the plugin's small description travels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pyarrow as pa
from distributed.diagnostics.plugin import WorkerPlugin

from batchnlp.errors import BatchnlpError, JobFailed
from batchnlp.inference.engine import BatchStats
from batchnlp.inference.heartbeat import beat, tracking
from batchnlp.io.formats import ReadOptions, WorkUnit, read_unit
from batchnlp.io.storage import Location
from batchnlp.ledger.output import Output, bad_line_record
from batchnlp.ledger.record import PartResult, encode_schema
from batchnlp.ledger.stats import column_stats
from batchnlp.spec import TaskSpec
from batchnlp.tasks import task_columns
from batchnlp.tasks.base import value_problem
from batchnlp.tasks.columns import ERROR_COLUMN
from batchnlp.tasks.keys import input_keys, namespace
from batchnlp.util.compat import import_past_ast_race
from batchnlp.version import __version__

EXAMPLES_PER_PART = 5


@dataclass(frozen=True)
class ModelSettings:
    """How each worker loads and runs its models."""

    tasks: tuple[TaskSpec, ...]
    device: str
    precision: str
    tokens_per_batch: int | None
    max_length: int | None
    threads: int | None
    storage_options: dict[str, Any]
    rescore_margin: float | None = None
    backend: str = "auto"

    @property
    def plugin_name(self) -> str:
        """Distinct per model set, so jobs sharing a cluster do not replace each other's models."""
        engine = [self.device, self.precision, self.rescore_margin, self.backend]
        key = json.dumps([list(dataclasses.astuple(t)) for t in self.tasks] + engine)
        return "batchnlp-models-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ModelPlugin(WorkerPlugin):
    """Loads every task's model once per worker process."""

    idempotent = True

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.tasks: dict[str, Any] = {}
        self.checksums: dict[str, dict[str, str]] = {}
        self.students: dict[str, dict[str, str]] = {}  # a cascade's task → its student's weights' checksums
        self.precision = settings.precision
        self.device = settings.device
        self.loaded_at = 0.0
        self.backends: dict[str, str] = {}
        self.export_seconds = 0.0
        self.refused: Refused | None = None
        # task name → its namespace and what it hashes (batchnlp.tasks.keys): whose labels its inputs' keys name
        self.namespaces: dict[str, tuple[str, dict[str, Any]]] = {}

    async def setup(self, worker: Any = None) -> None:
        # Loading takes seconds: off the event loop, so the worker keeps answering heartbeats.
        try:
            await asyncio.to_thread(self.load)
        except BatchnlpError as e:  # the user's to fix (say a pinned model replaced in S3): each unit refuses with it
            self.refused = Refused(type(e), str(e))

    def load(self) -> None:
        import_past_ast_race("transformers")  # its first import in this worker (batchnlp.util.compat says why)
        from transformers.utils import logging as transformers_logging

        from batchnlp.inference.allocator import keep_freed_memory
        from batchnlp.inference.engine import Engine
        from batchnlp.inference.models.stage import content_digest, stage_and_hash, weights_of
        from batchnlp.tasks import TASKS

        transformers_logging.disable_progress_bar()
        keep_freed_memory()
        s = self.settings
        if s.threads:
            import torch

            torch.set_num_threads(s.threads)
        engine = Engine(s.device, s.precision, s.tokens_per_batch, s.rescore_margin, s.backend)
        self.device, self.precision = engine.device, engine.precision
        for spec in s.tasks:
            # A pinned ref is checked here too: a model replaced after the driver's check is caught.
            directory, checksums = stage_and_hash(spec.model, s.storage_options)
            engine.digests[directory.resolve()] = content_digest(checksums)  # the ONNX cache's key, hashed once
            task = self.tasks[spec.name] = TASKS[spec.kind].load()(spec, directory, engine, s.max_length)
            self.checksums[spec.name] = weights_of(checksums)
            self.backends[spec.name] = engine.backends[spec.model]
            if spec.student:  # a cascade: the student labels first, the task's model its close calls
                self.students[spec.name] = self._load_student(spec, engine)
            digest = engine.digests[directory.resolve()]
            settings = {**self._engine_settings(engine, task), "student_weights": self.students.get(spec.name)}
            self.namespaces[spec.name] = namespace(spec, digest, settings)
        self.export_seconds = engine.export_seconds
        self.loaded_at = time.time()

    def _load_student(self, spec: TaskSpec, engine: Any) -> dict[str, str]:
        """Stage and hash a cascade's student as task models are, load it into its task
        (:meth:`batchnlp.tasks.classify.Classify.cascade_from`), and return its weights' checksums."""
        from batchnlp.inference.models.stage import content_digest, stage_and_hash, weights_of

        directory, checksums = stage_and_hash(str(spec.student), self.settings.storage_options)
        engine.digests[directory.resolve()] = content_digest(checksums)
        self.tasks[spec.name].cascade_from(directory)
        return weights_of(checksums)

    @staticmethod
    def _engine_settings(engine: Any, task: Any) -> dict[str, Any]:
        """How a task's model runs, as resolved here: part of its namespace (a change misses the cache)."""
        return {
            "device": engine.device,
            "precision": engine.precision,
            "backend": engine.backends[task.spec.model],
            "max_length": task.max_length,
            "rescore_margin": engine.rescore_margin,
        }

    def keys(self, name: str, inputs: TaskRows) -> pa.FixedSizeBinaryArray:
        """The input key of each of ``inputs``' rows for task ``name`` (:mod:`batchnlp.tasks.keys`)."""
        extra = [column.to_pylist() for column in inputs.rows.columns] if inputs.rows is not None else None
        return input_keys(self.namespaces[name][0], inputs.texts, extra)


@dataclass(frozen=True)
class UnitJob:
    """Everything a unit needs besides the models; small and picklable."""

    input: Location
    read: ReadOptions
    id_column: str | None
    schema: pa.Schema  # every part gets exactly these input columns and types
    plugin_name: str
    output: Output  # bound to the run: where and how the unit's rows are written


@dataclass(frozen=True)
class Refused:
    """A task's user-facing failure, returned rather than raised.

    Dask logs every raised task exception with its traceback on the worker's stderr ("Compute
    Failed"); a refusal the user must act on (a 403, a malformed line) is only a message.
    """

    error: type[BatchnlpError]
    message: str


def guarded(function: Any, *args: Any) -> Any:
    """Run a Dask task's ``function``, beating for it; a BatchnlpError comes back as a :class:`Refused` value."""
    from distributed import get_worker

    try:
        with tracking(str(get_worker().get_current_task())):
            return function(*args)
    except BatchnlpError as e:
        return Refused(type(e), str(e))


def run_unit(unit: WorkUnit, job: UnitJob) -> PartResult:
    """The Dask task: annotate one unit with the worker's loaded models."""
    return annotate_unit(unit, job, plugin_of(job))


def plugin_of(job: UnitJob) -> ModelPlugin:
    """This worker's loaded models for ``job``; their load error, raised, when they could not load."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(job.plugin_name)
    if isinstance(plugin, ModelPlugin) and plugin.refused is not None:
        raise plugin.refused.error(plugin.refused.message)
    if not isinstance(plugin, ModelPlugin) or len(plugin.tasks) != len(plugin.settings.tasks):
        raise JobFailed(f"models are not loaded on worker {get_worker().address}; see its log for the load error")
    return plugin


def refusal(values: Any) -> Refused | None:
    """The first :class:`Refused` among a task's inputs (an earlier task's refusal passes on), or None."""
    return next((value for value in values if isinstance(value, Refused)), None)


@dataclass
class UnitRows:
    """A unit read and checked: its table, its texts, and why each text cannot be annotated."""

    table: pa.Table
    texts: list[Any]
    text_errors: list[str | None]
    bad_lines: list[Any]
    read_seconds: float


@dataclass
class TaskRows:
    """What one task annotates of a unit: why each row cannot be (None: it can), and the valid rows'
    texts and input columns, in order."""

    problems: list[str | None]
    texts: list[str]
    rows: pa.Table | None  # the task's input_columns of the valid rows (qa's questions); None: it reads none


def read_rows(unit: WorkUnit, job: UnitJob) -> UnitRows:
    """Read a unit and check every text; a row that is not annotatable keeps its reason."""
    clock = time.perf_counter()
    read = read_unit(job.input, unit, job.read, job.schema)
    texts = read.table.column(job.read.text_column).to_pylist()
    errors = [error or value_problem(text, "text") for error, text in zip(read.errors, texts, strict=True)]
    return UnitRows(read.table, texts, errors, read.bad_lines, time.perf_counter() - clock)


def task_rows(task: Any, unit: UnitRows) -> TaskRows:
    """The rows of ``unit`` that ``task`` annotates: valid texts that pass the task's own checks."""
    problems = [
        error or problem for error, problem in zip(unit.text_errors, task.row_problems(unit.table), strict=True)
    ]
    valid = [i for i, problem in enumerate(problems) if problem is None]
    taken = pa.array(valid, pa.int64())  # typed: an empty list alone would be a null array
    rows = unit.table.select(list(task.input_columns)).take(taken) if task.input_columns else None
    return TaskRows(problems, [unit.texts[i] for i in valid], rows)


def annotate_unit(unit: WorkUnit, job: UnitJob, plugin: ModelPlugin, labels: Any = None) -> PartResult:
    """Read, annotate and write one unit; every input row is in the part, valid or not.

    ``labels``: where the run labelled each distinct input once (:mod:`batchnlp.execution.distinct`),
    its answers for this unit's rows, looked up instead of running the model here.
    """
    seconds: dict[str, float] = {}
    read = read_rows(unit, job)
    table, errors = read.table, list(read.text_errors)
    seconds["read"] = read.read_seconds
    beat()

    totals = BatchStats()
    task_stats: dict[str, dict[str, Any]] = {}
    labelled_by: dict[str, dict[str, int]] = {}  # a cascade's rows per model
    dedup: dict[str, dict[str, float]] = {}
    for name, task in plugin.tasks.items():
        clock = time.perf_counter()
        inputs = task_rows(task, read)
        if labels is None:
            column, stats = task.annotate(inputs.texts, inputs.rows)
            model_seconds = time.perf_counter() - clock
        else:
            column, stats, dedup[name], model_seconds = labels.answer(name, plugin.keys(name, inputs), task.output_type)
            model_seconds += time.perf_counter() - clock
        positions = pa.array(_positions(inputs.problems), pa.int64())
        written = task_columns(task.spec, task.output_type, column)  # one per task, or a spread value's (ner --redact)
        for field, values in written:
            table = table.append_column(field, values.take(positions))
        # _error keeps the first reason a row was not annotated: its text's, else a task's.
        errors = [error or problem for error, problem in zip(errors, inputs.problems, strict=True)]
        totals.add(stats)
        if stats.labelled_by:
            labelled_by[name] = stats.labelled_by
        task_stats[name] = column_stats(written[0][1])
        seconds[f"model:{name}"] = model_seconds
        # The engine's share of model:<name>; the rest is tokenising and decoding the outputs.
        seconds[f"engine:{name}"] = stats.engine_s
    seconds["input_wait"] = totals.input_wait_s

    clock = time.perf_counter()
    table = table.append_column(ERROR_COLUMN, pa.array(errors, pa.string()))
    metadata = {"version": __version__, "models": plugin.checksums, "precision": plugin.precision}
    if plugin.students:
        metadata["students"] = plugin.students
    written = job.output.write(unit, table, metadata, read.bad_lines)
    seconds["write"] = time.perf_counter() - clock

    reasons: dict[str, int] = {}
    for error in errors:
        if error is not None:
            reasons[error] = reasons.get(error, 0) + 1
    ids = table.column(job.id_column) if job.id_column in table.column_names else None
    rejected_rows = (i for i, error in enumerate(errors) if error is not None)
    examples = [
        {"row": i, "id": ids[i].as_py() if ids is not None else None, "reason": errors[i]}
        for i in islice(rejected_rows, EXAMPLES_PER_PART)
    ]
    return PartResult(
        unit=unit,
        part=written.part,
        rows_in=len(errors),
        rows_out=table.num_rows,
        rejected=len(errors) - errors.count(None),
        reasons=reasons,
        rejected_examples=examples,
        tokens=totals.tokens,
        padded_tokens=totals.padded_tokens,
        oom_splits=totals.oom_splits,
        rescored=totals.rescored,
        labelled_by=labelled_by,
        students=plugin.students,
        first_output_at=totals.first_output_at,
        bad_lines=len(read.bad_lines),
        bad_line_examples=[bad_line_record(unit, bad) for bad in read.bad_lines[:EXAMPLES_PER_PART]],
        quarantine=written.quarantine,
        bytes=written.bytes,
        sha256=written.sha256,
        files=written.files,
        seconds=seconds,
        device=plugin.device,
        precision=plugin.precision,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        models_loaded_at=plugin.loaded_at,
        models=plugin.checksums,
        backends=plugin.backends,
        export_seconds=plugin.export_seconds,
        task_stats=task_stats,
        dedup=dedup,
        cache_files=labels.cache_files if labels is not None else [],
        finished_at=time.time(),
        schema=encode_schema(table.schema),
    )


def _positions(errors: list[str | None]) -> list[int | None]:
    """For each row, its index among the valid rows, or None: ``take`` then places nulls."""
    positions: list[int | None] = []
    count = 0
    for error in errors:
        positions.append(None if error else count)
        count += error is None
    return positions
