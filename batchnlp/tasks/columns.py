"""The Arrow type of each task's output column, known from the job spec alone.

The driver needs the job's output schema before any model is loaded: a table output checks it
against the table's own schema before inference starts, not after the first unit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from batchnlp.inference.models.sentence import SentenceSettings
    from batchnlp.spec import TaskSpec

LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])
ANSWER = pa.struct([("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())])
ERROR_COLUMN = pa.field("_error", pa.string())
PROBS = "probs"  # --keep-probs: every label's probability, in the order LABEL_ORDER_KEY gives
LABEL_ORDER_KEY = b"batchnlp.labels"  # metadata of the probs field: the labels as a JSON list
MODEL = "model"  # --keep-probs with a cascade: which model labelled the row, one of LABELLERS
LABELLERS = ("student", "teacher")  # a cascade's models, as the model field and the run's counts name them
ZERO_SHOT_LABELS = "labels"  # zero-shot: every candidate label and its score, best first
EMBED_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}  # --embed-dtype
# ner: one entity (a group of tokens under --aggregation, a token under none), offsets in characters of the text.
ENTITY = pa.struct(
    [
        ("entity", pa.string()),
        ("score", pa.float32()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("word", pa.string()),
    ]
)
ENTITIES = pa.list_(ENTITY)
REDACTED = "redacted"  # ner --redact: the text with each kept entity replaced by [TYPE], column <task>_redacted
# Metadata of an embedding column's value field: its length, pooling and normalisation, as JSON values.
EMBEDDING_KEYS = (b"batchnlp.dimension", b"batchnlp.pooling", b"batchnlp.normalize")


def label_type(spec: TaskSpec) -> pa.DataType:
    """Classification: the best label and its score, plus the ``top_k`` best when asked for; with
    ``keep_probs`` every label's probability, and in a cascade which model labelled the row."""
    fields = list(LABEL_SCORE)
    if spec.top_k:
        fields.append(pa.field("top_k", pa.list_(LABEL_SCORE)))
    if spec.keep_probs:
        fields.append(pa.field(PROBS, pa.list_(pa.float32())))
        if spec.student:
            fields.append(pa.field(MODEL, pa.string()))
    return pa.struct(fields)


def with_label_order(kind: pa.DataType, labels: Sequence[str]) -> pa.DataType:
    """``kind`` with the labels of its probs list, in order, in that field's metadata.

    Only the loaded model knows its labels, so the driver's schema (from the spec) lacks them;
    Arrow compares types without metadata, and Parquet, Arrow IPC and the manifest's schema keep it.
    """
    order = {LABEL_ORDER_KEY: json.dumps(list(labels), ensure_ascii=False).encode()}
    return pa.struct([f.with_metadata(order) if f.name == PROBS else f for f in kind])


def label_order(kind: pa.DataType) -> list[str] | None:
    """The labels of a task column's probs list (:func:`with_label_order`); None when it has none."""
    if not pa.types.is_struct(kind) or kind.get_field_index(PROBS) < 0:
        return None
    metadata = kind.field(PROBS).metadata or {}
    return json.loads(metadata[LABEL_ORDER_KEY]) if LABEL_ORDER_KEY in metadata else None


def zero_shot_type(spec: TaskSpec) -> pa.DataType:
    """Zero-shot: the best label and its score, every candidate label with its score (``labels``,
    best first), and with ``keep_probs`` the scores in the spec's label order (named in the probs
    field's metadata, as :func:`with_label_order`). The labels are the spec's, so the driver's type
    is the worker's, metadata included."""
    fields = [*LABEL_SCORE, pa.field(ZERO_SHOT_LABELS, pa.list_(LABEL_SCORE))]
    if spec.keep_probs:
        fields.append(pa.field(PROBS, pa.list_(pa.float32())))
        return with_label_order(pa.struct(fields), spec.labels or ())
    return pa.struct(fields)


def answer_type(spec: TaskSpec) -> pa.DataType:
    """Question answering: the answer text, its score and its character span in the text."""
    return ANSWER


def entity_type(spec: TaskSpec) -> pa.DataType:
    """Named entities: a list of entities per row; with ``redact`` the row's value is a struct of that list
    and the redacted text, which the registry writes as two columns (:func:`batchnlp.tasks.task_fields`)."""
    if spec.redact:
        return pa.struct([pa.field("entities", ENTITIES), pa.field(REDACTED, pa.string())])
    return ENTITIES


def embedding_type(spec: TaskSpec) -> pa.DataType:
    """Embeddings: ``fixed_size_list<float32|float16>[dim]``, the dimension, pooling and normalisation in
    the value field's metadata, read from the checkpoint's config (:mod:`batchnlp.inference.models.sentence`).

    ``spec.model`` must be a directory holding at least the checkpoint's small files: the driver fetches a
    remote checkpoint's first (:mod:`batchnlp.execution.columns`), a worker has it staged.
    """
    from batchnlp.inference.models.refs import parse_ref
    from batchnlp.inference.models.sentence import read_settings

    return embedding_column(spec, read_settings(Path(parse_ref(spec.model).location), spec.model))


def embedding_column(spec: TaskSpec, settings: SentenceSettings) -> pa.DataType:
    """The embedding column of ``spec``'s float type for a checkpoint of these settings (:func:`embedding_of`)."""
    value = EMBED_DTYPES[spec.embed_dtype or "float32"]
    vector = embedding_of(value, settings.dimension, settings.pooling, settings.normalize)
    return vector if spec.chunk_tokens is None else chunks_of(vector)


def chunks_of(vector: pa.DataType) -> pa.DataType:
    """``--chunk-tokens``: a text's windows, each its embedding and the character span of the text it covers."""
    return pa.list_(pa.struct([("embedding", vector), ("start", pa.int32()), ("end", pa.int32())]))


def embedding_vectors(kind: pa.DataType) -> pa.DataType | None:
    """The embedding type of an embedding column: itself, or its chunks' ``embedding``; None for another column."""
    if pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
        chunk = kind.value_type
        return chunk.field("embedding").type if chunk.get_field_index("embedding") >= 0 else None
    floats = pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
    return kind if floats and pa.types.is_floating(kind.value_type) else None


def embedding_of(value: pa.DataType, dimension: int, pooling: str, normalize: bool) -> pa.DataType:
    """The fixed-size list of ``dimension`` ``value``s, described in its value field's metadata."""
    metadata = dict(zip(EMBEDDING_KEYS, (json.dumps(v).encode() for v in (dimension, pooling, normalize)), strict=True))
    return pa.list_(pa.field("item", value, metadata=metadata), dimension)


def embedding_settings(kind: pa.DataType) -> dict[str, object] | None:
    """An embedding column's dimension, pooling and normalize (:func:`embedding_of`), chunked or not;
    None for another column."""
    vector = embedding_vectors(kind)
    if vector is None:
        return None
    metadata = vector.value_field.metadata or {}
    return {
        key.decode().removeprefix("batchnlp."): json.loads(metadata[key]) for key in EMBEDDING_KEYS if key in metadata
    }
