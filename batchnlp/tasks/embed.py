"""Sentence embeddings: one vector per text, as ``sentence_transformers.SentenceTransformer.encode`` gives.

preprocess: token ids truncated to the checkpoint's ``max_seq_length`` (sentence-transformers'
``sentence_bert_config.json``; else the tokenizer's maximum), capped by ``--max-length``;
forward: the engine's token-budget batches through the encoder, pooled on the device over the
tokens the attention mask keeps (:mod:`batchnlp.inference.pooling`), so each row comes back as
``[dim]``; postprocess: a ``fixed_size_list<float32|float16>[dim]`` column whose value field's
metadata names the dimension, pooling and normalisation (:func:`batchnlp.tasks.columns.embedding_of`).

With ``chunk_tokens`` (``--chunk-tokens N --chunk-stride S``), each text is cut into windows of ``N``
tokens, special tokens included, consecutive windows sharing ``S`` (the fast tokenizer's overflowing
windows, as the qa task cuts contexts); every window of the unit is one sequence in the same
token-budget batches, and a text's value is the list of its windows' embeddings, each with the
character span of the text it covers (``list<struct<embedding, start, end>>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.errors import ModelError
from batchnlp.inference.engine import Engine
from batchnlp.inference.models.load import load_encoder
from batchnlp.inference.models.sentence import read_settings
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.columns import embedding_column

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it


@dataclass(kw_only=True)
class Chunks(ModelInputs):
    """Chunked embed's model inputs: every window of every text, the text each belongs to, and the
    character span of the text each covers."""

    rows: np.ndarray  # [windows]: the text each window belongs to
    spans: np.ndarray  # [windows, 2]: start and end character of the text's tokens in the window
    texts: int  # how many texts the windows came from

    def text_tokens(self) -> np.ndarray:
        """The tokens of every window of each text."""
        return self.tokens_by_text(self.rows, self.texts)


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
        if spec.chunk_tokens is not None and spec.chunk_tokens > self.max_length:
            raise ModelError(
                f"chunk_tokens {spec.chunk_tokens} of task {spec.name!r} is longer than model {spec.model!r} reads "
                f"({self.max_length} tokens): give --chunk-tokens {self.max_length} or fewer"
            )

    @property
    def output_type(self) -> pa.DataType:
        """``fixed_size_list<float32|float16>[dim]``, described in its value field's metadata
        (:func:`batchnlp.tasks.columns.embedding_of`): the staged checkpoint gives the dimension."""
        return embedding_column(self.spec, self.settings)

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        """Token ids per text, truncated to ``max_length`` as sentence-transformers truncates them; with
        ``chunk_tokens``, every window of every text (:class:`Chunks`)."""
        if self.spec.chunk_tokens is not None:
            return self.chunks(texts)
        if not texts:
            return ModelInputs(input_ids=[])
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False)
        return ModelInputs(input_ids=encoded["input_ids"])

    def chunks(self, texts: list[str]) -> Chunks:
        """Each text cut into windows of ``chunk_tokens`` tokens sharing ``chunk_stride``, with their spans."""
        if not texts:
            return Chunks(input_ids=[], rows=np.zeros(0, np.int64), spans=np.zeros((0, 2), np.int64), texts=0)
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.spec.chunk_tokens,
            stride=self.spec.chunk_stride or 0,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        spans = np.zeros((len(encoded["input_ids"]), 2), np.int64)
        for window, offsets in enumerate(encoded["offset_mapping"]):
            own = [offsets[i] for i, sequence in enumerate(encoded.sequence_ids(window)) if sequence == 0]
            spans[window] = (own[0][0], own[-1][1]) if own else (0, 0)
        rows = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
        return Chunks(input_ids=encoded["input_ids"], rows=rows, spans=spans, texts=len(texts))

    @staticmethod
    def head(outputs: Any) -> Any:
        """The pooled embeddings ``[batch, dim]``."""
        return outputs.embeddings

    def postprocess(self, inputs: ModelInputs, outputs: Any) -> pa.Array:
        """One embedding per text (a list of its windows' with ``chunk_tokens``), as the column's float type."""
        kind = self.output_type
        vector = kind.value_type.field("embedding").type if isinstance(inputs, Chunks) else kind
        dimension = self.settings.dimension
        stacked = np.stack(outputs) if len(outputs) else np.zeros((0, dimension), dtype=np.float32)
        values = pa.array(stacked.astype(vector.value_type.to_pandas_dtype()).ravel(), vector.value_type)
        embeddings = pa.FixedSizeListArray.from_arrays(values, type=vector)
        if not isinstance(inputs, Chunks):
            return embeddings
        windows = pa.StructArray.from_arrays(
            [embeddings, pa.array(inputs.spans[:, 0], pa.int32()), pa.array(inputs.spans[:, 1], pa.int32())],
            fields=list(kind.value_type),
        )
        counts = np.bincount(inputs.rows, minlength=inputs.texts)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), windows, type=kind)
