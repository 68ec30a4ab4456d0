"""The Arrow type of each task's output column, known from the job spec alone.

The driver needs the job's output schema before any model is loaded: a table output checks it
against the table's own schema before inference starts, not after the first unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec

LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])
ANSWER = pa.struct([("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())])
ERROR_COLUMN = pa.field("_error", pa.string())


def label_type(spec: TaskSpec) -> pa.DataType:
    """Classification: the best label and its score, plus the ``top_k`` best when asked for."""
    fields = list(LABEL_SCORE)
    if spec.top_k:
        fields.append(pa.field("top_k", pa.list_(LABEL_SCORE)))
    return pa.struct(fields)


def answer_type(spec: TaskSpec) -> pa.DataType:
    """Question answering: the answer text, its score and its character span in the text."""
    return ANSWER
