"""An encoder with sentence pooling on top: the engine runs it as any model, and it returns one
embedding per row instead of a vector per token.

Pooling runs on the device, in fp32 whatever the model's precision, over the tokens the attention
mask keeps (the batch's padding never counts), as sentence-transformers' ``Pooling`` and
``Normalize`` modules do; so a unit's outputs are ``[rows, dim]``, not ``[rows, tokens, dim]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn


class EmbeddingOutput(NamedTuple):
    embeddings: torch.Tensor  # [batch, dim], fp32


class PooledEncoder(nn.Module):
    """``encoder`` (a transformers base model: ``last_hidden_state``) pooled by ``pooling`` (mean, cls,
    max) and, with ``normalize``, scaled to unit L2 norm. ``config`` is the encoder's."""

    def __init__(self, encoder: nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.config: Any = encoder.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> EmbeddingOutput:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state.float()
        return EmbeddingOutput(pool(hidden, attention_mask, self.pooling, self.normalize))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """``[batch, tokens, dim]`` → ``[batch, dim]`` over the masked-in tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values  # sentence-transformers' fill
    else:
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled
