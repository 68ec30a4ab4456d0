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


def zero_shot_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Zero-shot: rows per best label (``labels``, charted as classification's), and, shown in its report
    section, each label's share of the annotated rows as the best label and the rows in which it scores
    at least 0.5 (``above_half``: multi-label, each label on its own; single-label, the label holding most
    of a row's probability)."""
    annotated, labels, above = merged["annotated"], merged.get("labels", {}), merged.get("above_half", {})
    return {
        "labels": labels,
        "above_half": above,
        "best_label_shares": _shares(labels, annotated),
        "above_half_shares": _shares(above, annotated),
    }


def _shares(counts: dict[str, int], annotated: int, shown: int = 12) -> str:
    """``sports 41 (41.0%), world 30 (30.0%), …``: the most common first, at most ``shown`` of them."""
    if not counts or not annotated:
        return "–"
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(f"{label} {count:,} ({count / annotated:.1%})" for label, count in ranked[:shown])
    return text + (f", and {len(ranked) - shown} more" if len(ranked) > shown else "")


def answer_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Question answering: rows given a non-empty answer, and their share of the annotated rows."""
    answered = merged.get("answered", 0)
    return {
        "answered": answered,
        "answer_rate": round(answered / merged["annotated"], 4) if merged["annotated"] else None,
    }


def embedding_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Embeddings: how many were written (one per row, or per chunk with --chunk-tokens), and the smallest,
    mean and largest L2 norm (1.0 throughout for a normalising model)."""
    vectors = merged.get("vectors", merged["annotated"])
    return {
        "vectors": vectors,
        "norm_min": _rounded(merged.get("norm_min")),
        "norm_mean": _rounded(merged.get("norm_sum", 0.0) / vectors) if vectors else None,
        "norm_max": _rounded(merged.get("norm_max")),
    }


def entity_figures(merged: dict[str, Any]) -> dict[str, Any]:
    """Named entities: entities found, rows with at least one and their share, count per entity type (most
    common first) and the five commonest as one line for the report's table."""
    annotated, rows = merged["annotated"], merged.get("rows_with_entities", 0)
    types = merged.get("entity_types", {})
    return {
        "entities": merged.get("entities", 0),
        "rows_with_entities": rows,
        "entity_row_rate": round(rows / annotated, 4) if annotated else None,
        "entity_types": types,
        "top_entity_types": ", ".join(f"{kind} {count:,}" for kind, count in list(types.items())[:5]) or "–",
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def label_cell(value: dict[str, Any]) -> str:
    """``label (score)``; a multi-label list joined by commas."""
    label = value["label"]
    label = ", ".join(map(str, label)) if isinstance(label, list) else label
    return f"{label}{_score(value)}"


def answer_cell(value: dict[str, Any]) -> str:
    """``'answer' (score)``: quoted, so an empty answer shows."""
    return f"{value['answer']!r}{_score(value)}"


def embedding_cell(value: list[Any]) -> str:
    """``[dim] 0.0123, -0.0456, 0.0789, …``: the length and the first values; chunks: how many, and the
    first one's span and values."""
    if value and isinstance(value[0], dict):
        first = value[0]
        return f"{len(value)} chunks; {first['start']}-{first['end']}: {embedding_cell(first['embedding'])}"
    head = ", ".join(f"{v:.4f}" for v in value[:3])
    return f"[{len(value)}] {head}{', …' if len(value) > 3 else ''}"


ENTITIES_SHOWN = 5  # inspect --rows: a row's first entities, then how many more


def entity_cell(value: list[dict[str, Any]]) -> str:
    """``PER 'Alice' (0.99), LOC 'Paris' (0.97)``: the first entities, the text each covers quoted; ``(none)``."""
    shown = [f"{entity['entity']} {entity['word']!r}{_score(entity)}" for entity in value[:ENTITIES_SHOWN]]
    more = len(value) - ENTITIES_SHOWN
    return ", ".join(shown) + (f", … {more} more" if more > 0 else "") if shown else "(none)"


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
EMBEDDINGS = Summary(
    embedding_figures,
    embedding_cell,
    ReportSection(
        "Embeddings",
        "Embeddings written (one per row, or per chunk with --chunk-tokens) and their L2 norms (1.0 when the "
        "model normalises them).",
        (
            ("annotated", "annotated"),
            ("vectors", "embeddings"),
            ("norm_min", "smallest norm"),
            ("norm_mean", "mean norm"),
            ("norm_max", "largest norm"),
        ),
    ),
)
ENTITIES = Summary(
    entity_figures,
    entity_cell,
    ReportSection(
        "Named entities",
        "Entities found, rows with at least one entity, of the rows the task annotated, and the commonest types.",
        (
            ("annotated", "annotated"),
            ("entities", "entities"),
            ("rows_with_entities", "rows with entities"),
            ("entity_row_rate", "share of rows"),
            ("top_entity_types", "top entity types"),
        ),
    ),
)
ZERO_SHOT = Summary(
    zero_shot_figures,
    label_cell,
    ReportSection(
        "Zero-shot classification",
        "Rows per best label, and rows per label scoring at least 0.5 (multi-label: each label on its own; "
        "single-label: the label holding most of the row's probability), each with its share of the annotated rows.",
        (
            ("annotated", "annotated"),
            ("best_label_shares", "best label: rows (share)"),
            ("above_half_shares", "score ≥ 0.5: rows (share)"),
        ),
    ),
)
