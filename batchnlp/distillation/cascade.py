"""Calibrating a cascade of the student and its teacher (``batchnlp run --cascade TASK=STUDENT``) on
``batchnlp distill``'s held-out rows.

A cascade lets the student label every row and hands the teacher the rows whose best two student
scores are closer than a margin (:mod:`batchnlp.tasks.classify`). On the held-out rows, for a
range of margins, :func:`calibrate` says what share of the rows the teacher would see and how
many of the cascade's labels would be the teacher's: a row the teacher sees gets its label, any
other the student's. The margin it recommends is the smallest, on a grid of :data:`STEP`, whose
agreement is at least :data:`TARGET_AGREEMENT`: the cheapest cascade that keeps the teacher's labels.
The student's margins are those a run compares (:func:`batchnlp.tasks.classify.best_two_gap` of its
scores at the precision distill measures at).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

TARGET_AGREEMENT = 0.995  # the share of the teacher's labels a recommended cascade keeps
STEP = 0.01  # the recommended margin is a multiple of this
COARSE = 0.05  # the table's steps, finer (STEP) near the answer
TABLE_MARGINS = tuple(round(COARSE * i, 2) for i in range(11))  # 0, 0.05, …, 0.5: the table, always


def calibrate(
    student_labels: Sequence[str],
    gaps: np.ndarray,
    teacher_labels: Sequence[str],
    target: float = TARGET_AGREEMENT,
) -> dict[str, Any]:
    """For each margin, the rows the teacher would label (``gaps`` below it), their share, and the
    cascade's agreement with ``teacher_labels``; and the smallest margin (a multiple of :data:`STEP`
    below 1) whose agreement is at least ``target``, or None when none is.

    ``gaps`` holds each row's best student score less its second best. The table has
    :data:`TABLE_MARGINS`, 0.05 steps on to the answer (to 0.95 when there is none), and every
    :data:`STEP` of the 0.05 that ends at or above the answer.
    """
    student = np.asarray(student_labels, dtype=object)
    teacher = np.asarray(teacher_labels, dtype=object)
    gaps = np.asarray(gaps, dtype=np.float32)
    rows = len(gaps)
    if not (len(student) == len(teacher) == rows):
        raise ValueError(f"{len(student)} student labels, {len(teacher)} teacher labels and {rows} margins")
    agreeing = student == teacher
    needed = math.ceil(target * rows - 1e-9)  # agreeing rows the target asks for, counted exactly

    def routed(margin: float) -> np.ndarray:
        return gaps < margin  # as a run compares them: float32 gaps, a margin below 1

    def agreed(margin: float) -> int:
        return int(np.sum(routed(margin) | agreeing))

    grid = [round(i * STEP, 2) for i in range(round(1 / STEP))]
    chosen = next((margin for margin in grid if rows and agreed(margin) >= needed), None)
    margins = set(TABLE_MARGINS)
    # Past 0.5, coarse steps up to the answer, or to the last below 1 when there is none (an overconfident student).
    top = 1 - COARSE if chosen is None else math.ceil(chosen / COARSE - 1e-9) * COARSE
    margins |= {round(COARSE * i, 2) for i in range(round(top / COARSE) + 1)}
    if chosen is not None:  # every step of the 0.05 that ends at or above the answer
        margins |= {round(top - i * STEP, 2) for i in range(round(COARSE / STEP) + 1) if top - i * STEP > -1e-9}
        margins.add(chosen)
    table = [
        {
            "margin": margin,
            "teacher_rows": int(routed(margin).sum()),
            "teacher_share": float(routed(margin).mean()) if rows else 0.0,
            "agreement": agreed(margin) / rows if rows else None,
        }
        for margin in sorted(margins)
    ]
    found = next((row for row in table if row["margin"] == chosen), None)
    return {
        "rows": rows,
        "target_agreement": target,
        "margin": chosen,
        "teacher_share": found["teacher_share"] if found else None,
        "agreement": found["agreement"] if found else None,
        "margins": table,
    }


def cascade_flags(task: str, student_dir: str, margin: float) -> str:
    """The ``batchnlp run`` flags of the cascade: ``--cascade TASK=STUDENT_DIR --cascade-margin M``."""
    return f"--cascade {shlex.quote(f'{task}={student_dir}')} --cascade-margin {margin:g}"


def cascade_command(task: str, kind: str, teacher: str, student_dir: str, margin: float) -> str:
    """A ``batchnlp run`` that labels with the cascade: the task as distill read it, the teacher as its
    model. A task named other than its kind is a spec's: then only the flags to add to its run."""
    flags = cascade_flags(task, student_dir, margin)
    if task != kind:
        return f"batchnlp run --spec SPEC {flags}"
    model = shlex.quote(f"{kind}={teacher}")
    return f"batchnlp run INPUT OUTPUT --task {kind} --model {model} {flags}"
