"""``batchnlp distill``: train a smaller, faster student on the labels a batchnlp run committed.

A night's labelling already holds what knowledge distillation needs: every row's text and the
teacher's probability for each label (``--keep-probs``). This module ties the three steps
together, each in a module of its own:

- :mod:`batchnlp.distillation.data`: the teacher's rows, from a committed output (files or a table),
  and a held-out split stable across reruns;
- :mod:`batchnlp.distillation.train`: the student (the teacher with one layer out of two, as
  DistilBERT was made, or any checkpoint), the distillation loss, per-epoch checkpoints;
- :mod:`batchnlp.distillation.report`: agreement with the teacher on the held-out rows, both models'
  speed through batchnlp's own engine on this machine, sizes; JSON, HTML and a model card.

STUDENT_DIR ends as a checkpoint ``batchnlp run --model classify=STUDENT_DIR`` loads (config with
the teacher's labels, fast tokenizer, ``model.safetensors``): it is loaded through batchnlp's own
checks before it is measured. It is a local directory; ``batchnlp models pull STUDENT_DIR
s3://…`` stages it for a cluster.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from batchnlp.distillation.cascade import calibrate, cascade_command, cascade_flags
from batchnlp.distillation.data import TeacherData, TeacherSource, held_out, load_teacher
from batchnlp.distillation.report import (
    REPORT_HTML,
    REPORT_JSON,
    Measured,
    agreement,
    cascade_advice,
    checkpoint_size,
    measure,
    speed,
    write_report,
)
from batchnlp.distillation.train import CHECKPOINTS, Student, Trainer, TrainSettings, latest_checkpoint
from batchnlp.errors import OutputError, SpecError
from batchnlp.version import __version__

logger = logging.getLogger(__name__)

Mode = Literal["new", "resume", "overwrite"]


@dataclass(frozen=True)
class DistillSpec:
    """One distillation: the teacher's output, the student's directory, the student's shape and training."""

    source: TeacherSource
    student_dir: str
    task: str | None = None  # None: the output's one classifier
    teacher_model: str | None = None  # None: the model the output's manifest names for the task
    student_init: str | None = None  # a checkpoint to start from instead of the teacher's layers
    layers: int | None = None  # None: half the teacher's
    hidden: int | None = None  # None: the teacher's width (layers copied); else random weights
    train: TrainSettings = field(default_factory=TrainSettings)
    eval_fraction: float = 0.1
    device: str = "auto"
    precision: str = "auto"  # training: fp32, or bf16 autocast; measuring: the engine's choice
    mode: Mode = "new"

    def check(self) -> None:
        """Refuse combinations that cannot mean anything, before any row is read."""
        problems = []
        if "://" in self.student_dir and not self.student_dir.startswith("file://"):
            problems.append(
                f"STUDENT_DIR must be a local directory, got {self.student_dir!r}: train here, then stage the "
                "student with batchnlp models pull STUDENT_DIR s3://bucket/models/name/"
            )
        if self.student_init and (self.layers or self.hidden):
            problems.append("--student-init starts from that checkpoint's shape: drop --layers and --hidden")
        if self.precision in ("fp16", "int8"):
            problems.append(f"--precision {self.precision} does not train; use bf16 (GPU) or fp32")
        if not 0 < self.eval_fraction < 1:
            problems.append(f"--eval-fraction must be between 0 and 1 (exclusive), got {self.eval_fraction}")
        if problems:
            raise SpecError("invalid distill settings:\n  - " + "\n  - ".join(problems))


@dataclass
class DistillResult:
    """Where the student is and what the report says."""

    directory: Path
    report: dict[str, Any]

    def summary(self) -> str:
        """The line the command ends with: size, agreement against the baseline, speed."""
        r = self.report
        held, fast = r["eval"], r["speed"]
        return (
            f"student {self.directory}: {r['student']['layers']} layer{'s' * (r['student']['layers'] != 1)}, "
            f"{r['student']['size']['parameters']:,} "
            f"parameters (teacher {r['teacher']['size']['parameters']:,}); held-out agreement with the teacher "
            f"{held['agreement']:.1%} (majority baseline {held['majority_baseline']:.1%}), macro-F1 "
            f"{held['macro_f1']:.3f}; {fast['student_tokens_per_second']:,.0f} tokens/s vs the teacher's "
            f"{fast['teacher_tokens_per_second']:,.0f} ({fast['speedup']}×, {fast['device']} {fast['precision']}); "
            f"report {self.directory / REPORT_HTML}"
        )

    def cascade_line(self) -> str:
        """The cascade the held-out rows recommend: its margin, the teacher's share, the ``batchnlp run`` command."""
        return cascade_advice(self.report)


def distill(spec: DistillSpec, on_step: Callable[[int, int, float], None] | None = None) -> DistillResult:
    """Read the teacher's rows, train the student, save it, measure both, write the report."""
    import torch
    from transformers.utils import logging as transformers_logging

    from batchnlp.inference.models.stage import stage

    transformers_logging.disable_progress_bar()  # "Loading weights" bars: ours is the one progress display
    spec.check()
    directory = Path(spec.student_dir.removeprefix("file://"))
    _prepare(directory, spec.mode)
    data = load_teacher(spec.source, spec.task)
    if data.student_rows:
        logger.warning(
            "%d of the %d rows of %s were labelled by a cascade's student, not by the teacher: the student learns "
            "them as the teacher's labels",
            data.student_rows, len(data.texts), data.source,
        )  # fmt: skip
    evaluation = held_out(data.keys, spec.eval_fraction)
    if evaluation.all() or not evaluation.any():
        raise SpecError(
            f"{data.source} holds {len(data.texts)} annotated rows: too few to hold out --eval-fraction "
            f"{spec.eval_fraction} of them and train on the rest ({'all' if evaluation.all() else 'none'} fell in the "
            "held-out split). Label more rows (a student needs hundreds at least), or change --eval-fraction"
        )
    device, precision = _training_device(spec)
    teacher_ref = spec.teacher_model or data.model
    teacher_dir = stage(teacher_ref, spec.source.storage_options)
    train = np.flatnonzero(~evaluation)
    settings = TrainSettings(**{**spec.train.__dict__, "data": _data_digest(data, train)})
    torch.manual_seed(settings.seed)  # the student's random parts (a new head, --hidden) are part of the seed
    student = _student(spec, data, teacher_dir)

    logger.info(
        "distilling %s (%d training rows, %d held out) into a %s-layer student on %s (%s)",
        data.source, len(train), int(evaluation.sum()), student.init.get("layers"), device, precision,
    )  # fmt: skip
    trainer = Trainer(student, settings, directory, device, precision, on_step)
    clock = time.perf_counter()
    trainer.fit([data.texts[i] for i in train], data.probs[train], resume=spec.mode == "resume")
    seconds = time.perf_counter() - clock
    _save(student, data, directory)

    texts = [data.texts[i] for i in np.flatnonzero(evaluation)]
    teacher_labels = [data.labels[i] for i in data.hard[evaluation]]
    task = (data.task, data.kind)
    teacher = measure(task, teacher_dir, teacher_ref, texts, spec.device, spec.precision)
    pupil = measure(task, directory, str(directory), texts, spec.device, spec.precision)
    majority = data.labels[int(np.bincount(data.hard[train], minlength=len(data.labels)).argmax())]
    report = {
        "report_version": 1,
        "batchnlp_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": {"model": teacher_ref, "size": checkpoint_size(teacher_dir), "layers": _layers(teacher_dir)},
        "student": {
            "model": str(directory),
            "size": checkpoint_size(directory),
            "layers": student.init.get("layers"),
            "init": student.init,
        },
        "data": {
            "source": data.source,
            "runs": data.runs,
            "task": data.task,
            "kind": data.kind,
            "labels": data.labels,
            "text_column": data.text_column,
            "id_column": data.id_column,
            "rows": len(data.texts),
            "student_rows": data.student_rows,
            "train_rows": len(train),
            "eval_rows": len(texts),
            "split": f"sha256 of {data.id_column or 'the row position'} < {spec.eval_fraction}",
        },
        "training": {
            **{k: v for k, v in settings.__dict__.items() if k != "data"},
            "device": device,
            "precision": precision,
            "seconds": round(seconds, 3),
            "epochs": trainer.losses,
        },
        "eval": agreement(pupil.labels, teacher_labels, data.labels, majority),
        "speed": speed(teacher, pupil, len(texts)),
        "cascade": _cascade(data, pupil, teacher_labels, teacher_ref, directory),
    }
    write_report(directory, report)
    return DistillResult(directory, report)


def _cascade(
    data: TeacherData, pupil: Measured, teacher_labels: list[str], teacher_ref: str, directory: Path
) -> dict[str, Any]:
    """The cascade's calibration on the held-out rows (:func:`batchnlp.distillation.cascade.calibrate`), with
    the flags and the ``batchnlp run`` command of the margin it recommends."""
    found = calibrate(pupil.labels, pupil.gaps, teacher_labels)
    margin = found["margin"]
    found["precision"] = pupil.precision  # the margins are the student's scores at this precision
    found["flags"] = None if margin is None else cascade_flags(data.task, str(directory), margin)
    found["command"] = (
        None if margin is None else cascade_command(data.task, data.kind, teacher_ref, str(directory), margin)
    )
    return found


def _prepare(directory: Path, mode: Mode) -> None:
    """A new student needs an empty STUDENT_DIR; --overwrite clears batchnlp's files there; --resume keeps them."""
    ours = [directory / CHECKPOINTS, directory / REPORT_JSON]
    if mode == "overwrite":
        shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
    elif mode == "new" and directory.is_dir() and any(directory.iterdir()):
        hint = "pass --resume to finish it" if latest_checkpoint(directory) else "pass --overwrite to replace it"
        what = "a student" if any(path.exists() for path in ours) else "files"
        raise OutputError(f"{directory} already holds {what}; {hint}, or name another STUDENT_DIR")
    directory.mkdir(parents=True, exist_ok=True)


def _training_device(spec: DistillSpec) -> tuple[str, str]:
    """The device, and fp32 or bf16 autocast: bf16 where asked, or by default on a GPU that has it."""
    from batchnlp.inference.engine import resolve

    device, precision = resolve(spec.device, spec.precision)
    return device, "bf16" if precision == "bf16" else "fp32"


def _student(spec: DistillSpec, data: TeacherData, teacher_dir: Path) -> Student:
    from batchnlp.distillation.train import student_from_checkpoint, student_from_teacher
    from batchnlp.inference.models.stage import stage

    if spec.student_init:
        return student_from_checkpoint(
            stage(spec.student_init, spec.source.storage_options), spec.student_init, data.labels
        )
    _check_single_label(teacher_dir)
    return student_from_teacher(teacher_dir, data.labels, spec.layers, spec.hidden)


def _check_single_label(teacher_dir: Path) -> None:
    """Softmax teachers only: a multi-label (sigmoid) teacher's probabilities are not one distribution."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=False)
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        raise SpecError(
            "the teacher is a multi-label (sigmoid) classifier; batchnlp distill trains students of single-label "
            "(softmax) classifiers only"
        )


def _save(student: Student, data: TeacherData, directory: Path) -> None:
    """The student as ``batchnlp run`` loads it: config with the teacher's labels, tokenizer, safetensors."""
    config = student.model.config
    config.id2label = dict(enumerate(data.labels))
    config.label2id = {label: i for i, label in enumerate(data.labels)}
    student.model.save_pretrained(directory)
    student.tokenizer.save_pretrained(directory)


def _layers(directory: Path) -> int | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(directory, trust_remote_code=False), "num_hidden_layers", None)


def _data_digest(data: TeacherData, rows: np.ndarray) -> str:
    """What the training rows are, for the resume check: their keys and the teacher's probabilities."""
    digest = hashlib.sha256()
    for i in rows:
        digest.update(data.keys[i].encode() + b"\0")
    digest.update(np.ascontiguousarray(data.probs[rows]).tobytes())
    return digest.hexdigest()[:16]


class TrainingProgress:
    """Training steps shown as ``run`` shows units: a live bar on a terminal, else a log line every
    interval (``BATCHNLP_PROGRESS_INTERVAL``) with structured fields (``distill_progress`` events)."""

    def __init__(self, mode: str) -> None:
        from batchnlp.observe.progress import interval_from_env

        self.mode = mode
        self.interval = interval_from_env()
        self._bar: Any = None
        self._task: Any = None
        self._last = time.monotonic()

    def __enter__(self) -> TrainingProgress:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"))
            self._bar = Progress(*columns, TimeRemainingColumn(), transient=True)
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, done: int, total: int, loss: float) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("distil", total=total, loss="")
            self._bar.update(self._task, completed=done, loss=f"loss {loss:.4f}")
        elif self.mode == "log" and (time.monotonic() - self._last >= self.interval or done == total):
            self._last = time.monotonic()
            fields = {"event": "distill_progress", "steps": done, "total_steps": total, "loss": round(loss, 6)}
            logger.info("step %d of %d, loss %.4f", done, total, loss, extra=fields)
