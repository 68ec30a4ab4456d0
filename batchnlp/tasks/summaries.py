"""How each task's output column is summarised for people: the run report's figures and section,
and one value as ``batchnlp inspect --rows`` shows it. Torch-free, so the driver and ``inspect``
use it without loading a model; the task registry (:mod:`batchnlp.tasks`) names one per task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReportSection:
    """A report section of its own for a task kind: a table with one row per task of that kind."""

    title: str
    note: str
    columns: tuple[tuple[str, str], ...]  # (figure key, heading); an ``_rate`` figure shows as a percentage


@dataclass(frozen=True)
class Summary:
    """What the report and ``inspect`` say of one task kind's column.

    ``figures`` turns the task's statistics, summed over units (:func:`batchnlp.ledger.stats.merge`), into
    its own figures in ``_report.json``, beside the ``annotated`` and ``scores`` every task has;
    ``cell`` writes one output value for ``inspect --rows``; ``section`` is the kind's own report
    section, if it has one.
    """

    figures: Callable[[dict[str, Any]], dict[str, Any]]
    cell: Callable[[dict[str, Any]], str]
    section: ReportSection | None = None


def label_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Classification: rows per label."""
    return {"labels": merged.get("labels", {})}


def answer_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Question answering: rows given a non-empty answer, and their share of the annotated rows."""
    answered = merged.get("answered", 0)
    return {
        "answered": answered,
        "answer_rate": round(answered / merged["annotated"], 4) if merged["annotated"] else None,
    }


def label_cell(value: dict[str, Any]) -> str:
    """``label (score)``; a multi-label list joined by commas."""
    label = value["label"]
    label = ", ".join(map(str, label)) if isinstance(label, list) else label
    return f"{label}{_score(value)}"


def answer_cell(value: dict[str, Any]) -> str:
    """``'answer' (score)``: quoted, so an empty answer shows."""
    return f"{value['answer']!r}{_score(value)}"


def _score(value: dict[str, Any]) -> str:
    score = value.get("score")
    return f" ({score:.2f})" if isinstance(score, int | float) else ""


LABELS = Summary(label_figures, label_cell)
ANSWERS = Summary(
    answer_figures,
    answer_cell,
    ReportSection(
        "Question answering",
        "Rows given a non-empty answer, of the rows the task annotated.",
        (("annotated", "annotated"), ("answered", "answered"), ("answer_rate", "answer rate")),
    ),
)
