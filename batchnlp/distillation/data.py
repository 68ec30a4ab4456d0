"""The teacher's side of ``batchnlp distill``: the soft labels of a committed batchnlp output.

Only a committed output is read (files: ``_SUCCESS`` and the parts its ``_manifest.json`` names;
a Delta/Iceberg table: every run staged in it that the table itself holds), so a student is never
trained on a half-written night. The text column, the id column and the teacher model come from
the run's own manifest; the label order from the metadata of the task column's ``probs`` field
(``--keep-probs``).

The held-out split is a hash of each row's id (or, without an id column, of its position in the
output), so a rerun, a resume or a second student splits the same rows the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchnlp.errors import InputError
from batchnlp.io.storage import Location, storage_errors
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.record import Manifest, decode_schema
from batchnlp.tasks import TASKS
from batchnlp.tasks.columns import MODEL, PROBS, label_order


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher's labels are: OUTPUT of a run, or a Delta/Iceberg table of runs."""

    output: str
    output_format: str | None = None  # None: part files; delta or iceberg
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    catalog: str = "default"
    catalog_options: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TeacherData:
    """The rows a student learns from: each text with the teacher's probability per label."""

    source: str  # the output as messages show it
    task: str  # the task column
    kind: str  # classify or sentiment
    labels: list[str]  # the order of each probs vector
    model: str  # the teacher model's ref, as the manifest records it
    runs: list[str]  # run ids the rows come from
    text_column: str
    id_column: str | None
    texts: list[str]
    probs: np.ndarray  # [rows, labels], float32
    keys: list[str]  # what the split hashes: the id, else the row's position
    student_rows: int = 0  # rows a cascade's student labelled (their model field says so), not the teacher

    @property
    def hard(self) -> np.ndarray:
        """The teacher's labels (indexes into :attr:`labels`): its best-scoring label per row."""
        return self.probs.argmax(axis=-1)


def load_teacher(source: TeacherSource, task: str | None) -> TeacherData:
    """Every annotated row of ``task`` in the committed output; rows the run rejected are left out."""
    runs = committed_runs(source)
    display = Location(source.output, source.storage_options).display() if not source.output_format else source.output
    name = _task_name(display, runs[0][1], task)
    first = _task_column(display, runs[0][1], name)
    texts: list[str] = []
    probs: list[list[float]] = []
    keys: list[str] = []
    student_rows = 0
    for location, manifest in runs:
        if _task_column(display, manifest, name)[1] != first[1]:
            raise InputError(
                f"the runs in {display} label task {name!r} with different label sets; distil from one output "
                "whose runs used the same model"
            )
        student_rows += _read_rows(location, manifest, name, texts, probs, keys)
    if not texts:
        raise InputError(f"{display} holds no annotated rows of task {name!r} to learn from")
    manifest = runs[0][1]
    return TeacherData(
        source=display,
        task=name,
        kind=first[0],
        labels=first[1],
        model=manifest.models[name]["ref"],
        runs=[m.run_id for _, m in runs],
        text_column=manifest.spec.get("text_column", "text"),
        id_column=manifest.spec.get("id_column"),
        texts=texts,
        probs=np.asarray(probs, dtype=np.float32),
        keys=keys,
        student_rows=student_rows,
    )


def committed_runs(source: TeacherSource) -> list[tuple[Location, Manifest]]:
    """(run directory, manifest) of each committed run: OUTPUT's, or those a table holds, oldest first."""
    if source.output_format:
        return _table_runs(source)
    location = Location(source.output, source.storage_options)
    committer = Committer(location)
    with storage_errors("read", location.display()):
        finished = committer.finished()
    if not finished:
        raise InputError(
            f"{location.display()} is not a committed batchnlp output (no _SUCCESS): distil from a finished run, or "
            "finish this one first (batchnlp run ... --resume)"
        )
    return [(location, committer.read_manifest())]


def _table_runs(source: TeacherSource) -> list[tuple[Location, Manifest]]:
    """The runs a Delta/Iceberg table holds (each staged in its own directory, sealed, then committed):
    :meth:`batchnlp.ledger.output.TableOutput.covered_runs` of an output bound to no run of its own."""
    from batchnlp.io.tables.base import RUNS
    from batchnlp.ledger.output import open_output
    from batchnlp.spec import JobSpec

    settings = {
        "input": "-",
        "output": source.output,
        "output_format": source.output_format,
        "catalog": source.catalog,
        "catalog_options": dict(source.catalog_options),
        "storage_options": dict(source.storage_options),
    }
    output = open_output(JobSpec.from_settings(settings))
    sink = output.sink
    runs = [(sink.staging(manifest.run_id), manifest) for manifest in output.covered_runs()]
    if not runs:
        raise InputError(
            f"{sink.display()} holds no committed batchnlp run (none of its {RUNS}/ directories is sealed and in "
            "the table): distil from a table a batchnlp run has committed to"
        )
    return sorted(runs, key=lambda run: run[1].committed_at)


def _task_name(display: str, manifest: Manifest, task: str | None) -> str:
    """``task``, which the output must have; by default its one classifier."""
    tasks = ", ".join(f"{name} ({model['task']})" for name, model in manifest.models.items())
    if task is None:
        classifiers = [name for name, model in manifest.models.items() if _distillable(model["task"])]
        if len(classifiers) == 1:
            return classifiers[0]
        raise InputError(f"{display} has the tasks {tasks}: pass --task NAME to say which one to distil")
    if task not in manifest.models:
        raise InputError(f"{display} has no task {task!r}; its tasks: {tasks}. Pass --task with one of them")
    return task


def _distillable(kind: str) -> bool:
    """A task kind whose output distil learns from: a classifier's probabilities (zero-shot's are refused)."""
    return TASKS[kind].keeps_probs and not TASKS[kind].takes_labels


def _task_column(display: str, manifest: Manifest, task: str) -> tuple[str, list[str]]:
    """(task kind, label order) of the task column, which must hold probabilities (--keep-probs)."""
    kind = manifest.models.get(task, {}).get("task")
    if kind is not None and TASKS[kind].takes_labels:
        raise InputError(
            f"task {task!r} of {display} is {kind}: distil does not take zero-shot labels yet. It starts the "
            "student from the teacher's layers and measures the teacher as a classifier of the labels it learns, "
            "and a zero-shot teacher is an NLI model that scores (text, hypothesis) pairs, not such a classifier"
        )
    if kind is None or not TASKS[kind].keeps_probs:
        raise InputError(
            f"task {task!r} of {display} is {kind or 'missing'}: distil takes a classify or sentiment task, "
            "whose labels come with probabilities"
        )
    if not manifest.schema:
        raise InputError(f"{display} (run {manifest.run_id}) holds no rows to learn from")
    column = decode_schema(manifest.schema["arrow"]).field(task).type
    labels = label_order(column)
    if labels is None:
        raise InputError(
            f"the {task!r} column of {display} (run {manifest.run_id}) has no probabilities ({PROBS}): the teacher's "
            f"soft labels are what a student learns from. Label the data again with them: batchnlp run INPUT OUTPUT "
            f"--task {kind} ... --keep-probs"
        )
    return kind, labels


def _read_rows(
    location: Location, manifest: Manifest, task: str, texts: list[str], probs: list[list[float]], keys: list[str]
) -> int:
    """Append the run's annotated rows, in part order; ``keys`` get the id, else the position in the run.
    Returns how many of them a cascade's student labelled (the column's ``model`` field, where it has one)."""
    from batchnlp.io.formats.writers import OutputFormat

    spec = manifest.spec
    text_column, id_column = spec.get("text_column", "text"), spec.get("id_column")
    columns = [c for c in (text_column, id_column, task) if c]
    position = student_rows = 0
    for part in manifest.parts:
        for name in part.paths:
            path = location.child(name)
            with storage_errors("read", location.display(path)), location.fs.open(path) as handle:
                rows = _part_rows(handle, OutputFormat.of_part(name), columns, part.rows)
            for row in rows:
                value = row.get(task)
                key = str(row[id_column]) if id_column else f"{manifest.run_id}:{position}"
                position += 1
                if value is None or value.get(PROBS) is None:  # a rejected row: no label to learn
                    continue
                texts.append(row[text_column])
                probs.append(value[PROBS])
                keys.append(key)
                student_rows += value.get(MODEL) == "student"
    return student_rows


def _part_rows(handle: Any, written: Any, columns: list[str], rows: int) -> list[dict[str, Any]]:
    """The ``columns`` of every row of one part (Parquet: only those columns are read)."""
    from batchnlp.io.formats import FORMATS

    if written.format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(handle, columns=columns).to_pylist()
    return FORMATS[written.format].head(handle, max(rows, 1), written.compression)


def held_out(keys: list[str], fraction: float) -> np.ndarray:
    """True for the rows of the held-out split: the first 8 bytes of sha256(key), as a number in [0, 1),
    below ``fraction``. Stable across runs, machines and row order."""
    scale = float(1 << 64)
    return np.array(
        [int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / scale < fraction for key in keys],
        dtype=bool,
    )
