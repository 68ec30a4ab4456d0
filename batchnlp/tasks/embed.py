"""Sentence embeddings: one vector per text, as ``sentence_transformers.SentenceTransformer.encode`` gives.

preprocess: token ids truncated to the checkpoint's ``max_seq_length`` (sentence-transformers'
``sentence_bert_config.json``; else the tokenizer's maximum), capped by ``--max-length``;
forward: the engine's token-budget batches through the encoder, pooled on the device over the
tokens the attention mask keeps (:mod:`batchnlp.inference.pooling`), so each row comes back as
``[dim]``; postprocess: a ``fixed_size_list<float32|float16>[dim]`` column whose value field's
metadata names the dimension, pooling and normalisation (:func:`batchnlp.tasks.columns.embedding_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.inference.engine import Engine
from batchnlp.inference.models.load import load_encoder
from batchnlp.inference.models.sentence import read_settings
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.columns import embedding_column

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


class Embed(Task):
    """preprocess: truncated token ids; forward: pooled embeddings ``[texts, dim]``; postprocess: the column."""

    loader = staticmethod(load_encoder)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        super().__init__(spec, directory, engine, max_length)
        self.settings = read_settings(directory, spec.model)
        limits = [
            max_length,
            self.settings.max_seq_length or self.tokenizer.model_max_length,
            getattr(self.config, "max_position_embeddings", None),
        ]
        self.max_length = min(limit for limit in limits if limit)

    @property
    def output_type(self) -> pa.DataType:
        """``fixed_size_list<float32|float16>[dim]``, described in its value field's metadata
        (:func:`batchnlp.tasks.columns.embedding_of`): the staged checkpoint gives the dimension."""
        return embedding_column(self.spec, self.settings)

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        """Token ids per text, truncated to ``max_length`` as sentence-transformers truncates them."""
        if not texts:
            return ModelInputs(input_ids=[])
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False)
        return ModelInputs(input_ids=encoded["input_ids"])

    @staticmethod
    def head(outputs: Any) -> Any:
        """The pooled embeddings ``[batch, dim]``."""
        return outputs.embeddings

    def postprocess(self, inputs: ModelInputs, outputs: Any) -> pa.Array:
        """One embedding per text, as the column's float type."""
        kind = self.output_type
        dimension = self.settings.dimension
        rows = np.stack(outputs) if len(outputs) else np.zeros((0, dimension), dtype=np.float32)
        values = pa.array(rows.astype(kind.value_type.to_pandas_dtype()).ravel(), kind.value_type)
        return pa.FixedSizeListArray.from_arrays(values, type=kind)
