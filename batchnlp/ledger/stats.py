"""Per-task output statistics, gathered by the worker from the Arrow column it just built.

Cheap (a few Arrow kernels over one column per task) and small (a label → count map, ten
histogram bins), so they travel back in every :class:`~batchnlp.ledger.commit.PartResult` and its
progress record; the run report sums them instead of reading the output again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchnlp.tasks.columns import embedding_vectors

SCORE_BINS = 10  # equal bins over [0, 1]; a score outside falls in the end bin


def column_stats(column: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
    """Statistics of one task's output over a unit's annotated rows (nulls are not counted).

    ``annotated``: rows with a value; ``scores``: the score histogram's counts; ``labels``
    (classification: a ``label`` field): count per label; ``answered`` (qa: an ``answer``
    field): rows whose answer is not empty; ``above_half`` (zero-shot: a ``labels`` list of every
    candidate's score): per label, the rows in which it scores at least 0.5. An embedding column (a
    list per row, or a list of chunks with one each) has its vectors' norms (:func:`embedding_stats`)
    instead of labels, and an entity column (ner: a list of entities per row) :func:`entity_stats`.
    """
    valid = column.drop_null() if column.null_count else column
    stats: dict[str, Any] = {"annotated": len(valid)}
    if embedding_vectors(column.type) is not None:  # embeddings (or each row's chunks'): their norms
        return stats | embedding_stats(valid)
    if pa.types.is_list(column.type) and pa.types.is_struct(column.type.value_type):  # ner: entities per row
        return stats | entity_stats(valid)
    names = {field.name for field in column.type}
    scores = pc.struct_field(valid, "score").to_numpy(zero_copy_only=False).astype(np.float64)
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=SCORE_BINS, range=(0.0, 1.0))
    stats["scores"] = counts.tolist()
    if "label" in names:
        labels = pc.value_counts(pc.struct_field(valid, "label"))
        stats["labels"] = {item["values"]: item["counts"] for item in labels.to_pylist() if item["values"] is not None}
    if "labels" in names:  # zero-shot: every candidate label's score; the rows in which each reaches 0.5
        candidates = pc.list_flatten(pc.struct_field(valid, "labels"))
        over = candidates.filter(pc.greater_equal(pc.struct_field(candidates, "score"), 0.5))
        counts = pc.value_counts(pc.struct_field(over, "label")).to_pylist()
        stats["above_half"] = {item["values"]: item["counts"] for item in counts if item["values"] is not None}
    if "answer" in names:
        lengths = pc.utf8_length(pc.struct_field(valid, "answer"))
        stats["answered"] = int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
    return stats


def entity_stats(valid: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
    """Named entities (a list of entity structs per row): ``entities`` found, ``rows_with_entities``,
    ``entity_types`` (count per entity type), and as ``scores`` the histogram, over the rows with
    entities, of each row's least sure entity's score."""
    valid = _one_array(valid)
    lengths = pc.list_value_length(valid).to_numpy(zero_copy_only=False) if len(valid) else np.zeros(0, np.int64)
    flat = valid.flatten()
    scores = pc.struct_field(flat, "score").to_numpy(zero_copy_only=False).astype(np.float64)
    found = lengths > 0
    least = np.minimum.reduceat(scores, np.cumsum(lengths)[found] - lengths[found]) if len(scores) else scores
    counts, _ = np.histogram(np.clip(least, 0.0, 1.0), bins=SCORE_BINS, range=(0.0, 1.0))
    types = pc.value_counts(pc.struct_field(flat, "entity")) if len(flat) else pa.array([])
    return {
        "scores": counts.tolist(),
        "entities": len(flat),
        "rows_with_entities": int(found.sum()),
        "entity_types": {item["values"]: item["counts"] for item in types.to_pylist() if item["values"] is not None},
    }


def embedding_stats(valid: pa.Array | pa.ChunkedArray) -> dict[str, Any]:
    """Embeddings' L2 norms: how many (``vectors``: a row's, or each of its chunks'), their sum, smallest and
    largest (``norm_*``), and as ``scores`` a histogram over [0, 1] of each row's (mean) norm (a normalised
    embedding's norm is 1.0: the end bin; larger norms fall there too)."""
    valid = _one_array(valid)
    if not len(valid):
        return {"scores": [0] * SCORE_BINS, "vectors": 0}
    annotated = len(valid)
    owners = np.arange(annotated)
    if pa.types.is_struct(valid.type.value_type):  # --chunk-tokens: each chunk's embedding, and its row
        owners = np.repeat(owners, pc.list_value_length(valid).to_numpy(zero_copy_only=False))
        valid = pc.struct_field(pc.list_flatten(valid), "embedding")
    values = valid.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = pc.list_value_length(valid).to_numpy(zero_copy_only=False)
    vectors = np.repeat(np.arange(len(valid)), lengths)
    norms = np.sqrt(np.bincount(vectors, weights=values * values, minlength=len(valid)))
    rows = np.bincount(owners, weights=norms, minlength=annotated) / np.bincount(owners, minlength=annotated)
    counts, _ = np.histogram(np.clip(rows, 0.0, 1.0), bins=SCORE_BINS, range=(0.0, 1.0))
    return {
        "scores": counts.tolist(),
        "vectors": len(norms),
        "norm_sum": float(norms.sum()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
    }


def _one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one array (a unit's column may come in chunks): list kernels and ``flatten`` want one."""
    if isinstance(values, pa.ChunkedArray):
        return pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], values.type)
    return values


def merge(stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-unit statistics of one task (:func:`column_stats` results) over units.

    Every statistic is a count, so merging sums whatever the units have, key by key: a number, a
    histogram (bin by bin) or a ``{value: count}`` map (most common first); a ``*_min`` or ``*_max``
    figure (embeddings' norms) merges as the extreme. A task that counts something new needs no
    change here; a unit without statistics (an older record) adds nothing.
    """
    merged: dict[str, Any] = {"annotated": 0, "scores": [0] * SCORE_BINS}
    maps: dict[str, Counter[str]] = {}
    for item in stats:
        for key, value in item.items():
            if isinstance(value, dict):
                maps.setdefault(key, Counter()).update(value)
            elif isinstance(value, list):
                merged[key] = [a + b for a, b in zip(merged.get(key, [0] * len(value)), value, strict=True)]
            elif key.endswith(("_min", "_max")):  # extremes (embeddings' norms) merge as extremes, not sums
                pick = min if key.endswith("_min") else max
                merged[key] = value if key not in merged else pick(merged[key], value)
            else:
                merged[key] = merged.get(key, 0) + value
    merged.update((key, dict(counts.most_common())) for key, counts in maps.items())
    return merged


def bin_edges() -> list[float]:
    return [round(i / SCORE_BINS, 6) for i in range(SCORE_BINS + 1)]
