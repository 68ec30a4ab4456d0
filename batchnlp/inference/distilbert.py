"""DistilBERT's forward pass in plain PyTorch: what a worker runs for DistilBERT checkpoints.

transformers' model classes cost a process ~3 s of CPU to import (its modeling code pulls in
``torch._dynamo``, ``torch.distributed.tensor`` and, where SciPy is installed, ``scipy.optimize``),
none of which inference runs: on a 2-core machine that was most of a job's time to its first
row. This module needs torch alone. It computes what ``DistilBertForSequenceClassification``,
``DistilBertForQuestionAnswering`` and ``DistilBertForTokenClassification`` compute with SDPA
attention, from the same safetensors, under the same parameter names; the classifier computes its
last layer for the first token only, the one position its head reads (~14% of DistilBERT-base's
arithmetic, same result to rounding).

Only a checkpoint it recognises exactly is loaded here: model type ``distilbert``, no code of its
own, an activation it knows, and every tensor the head needs, present with the config's shapes
and nothing else. :func:`load` returns None for any other, which transformers then loads, or
explains what is wrong with it.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional

ACTIVATIONS = {"gelu": functional.gelu, "relu": functional.relu}
LAYER_NORM_EPS = 1e-12  # DistilBERT's, fixed in its code rather than in its config
OLD_POSITION_IDS = "distilbert.embeddings.position_ids"  # a buffer older transformers saved; not a weight


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # [rows, labels]


class AnswerOutput(NamedTuple):
    start_logits: torch.Tensor  # [rows, tokens]
    end_logits: torch.Tensor


class Embeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        # Made from empty tables: the checkpoint fills them, and initialising them on the meta device
        # would import torch._dynamo (~1.5 s) for nothing.
        self.word_embeddings = nn.Embedding.from_pretrained(torch.empty(config.vocab_size, config.dim))
        self.position_embeddings = nn.Embedding.from_pretrained(torch.empty(config.max_position_embeddings, config.dim))
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class Attention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.heads, self.size = config.n_heads, config.dim // config.n_heads
        self.q_lin, self.k_lin = nn.Linear(config.dim, config.dim), nn.Linear(config.dim, config.dim)
        self.v_lin, self.out_lin = nn.Linear(config.dim, config.dim), nn.Linear(config.dim, config.dim)

    def forward(self, queries: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``queries`` attend over ``hidden`` (the same tensor, or its first positions only)."""
        rows, width, _ = hidden.shape
        query = self.q_lin(queries).view(rows, -1, self.heads, self.size).transpose(1, 2)
        key = self.k_lin(hidden).view(rows, width, self.heads, self.size).transpose(1, 2)
        value = self.v_lin(hidden).view(rows, width, self.heads, self.size).transpose(1, 2)
        context = functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.size**-0.5)
        return self.out_lin(context.transpose(1, 2).reshape(rows, -1, self.heads * self.size))


class FeedForward(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(config.dim, config.hidden_dim), nn.Linear(config.hidden_dim, config.dim)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.activation(self.lin1(hidden)))


class Block(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.ffn = FeedForward(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, first_only: bool = False) -> torch.Tensor:
        """The layer's output for every position, or for position 0 only (``[rows, 1, dim]``)."""
        queries = hidden[:, :1] if first_only else hidden
        attended = self.sa_layer_norm(self.attention(queries, hidden, mask) + queries)
        return self.output_layer_norm(self.ffn(attended) + attended)


class Layers(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Block(config) for _ in range(config.n_layers))


class Encoder(nn.Module):
    """``DistilBertModel``: embeddings and the transformer blocks."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.transformer = Layers(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        # SDPA's boolean mask keeps True. On the CPU a batch without padding goes unmasked, SDPA's
        # fastest path; on a GPU that check would stall the host until the device caught up.
        unpadded = attention_mask.device.type == "cpu" and bool(attention_mask.all())
        mask = None if unpadded else attention_mask.bool()[:, None, None, :]
        hidden = self.embeddings(input_ids)
        layers = self.transformer.layer
        for index, block in enumerate(layers):
            hidden = block(hidden, mask, first_only and index == len(layers) - 1)
        return hidden


class Model(nn.Module):
    """An encoder and a task head; ``config`` is the checkpoint's transformers config."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.distilbert = Encoder(config)

    @property
    def base_model(self) -> Encoder:
        return self.distilbert


class SequenceClassifier(Model):
    """``DistilBertForSequenceClassification``: the first token's final state, a ReLU layer, the labels."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        first = self.distilbert(input_ids, attention_mask, first_only=True)[:, 0]
        return ClassifierOutput(self.classifier(functional.relu(self.pre_classifier(first))))


class QuestionAnswerer(Model):
    """``DistilBertForQuestionAnswering``: a start and an end logit per token."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.dim, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> AnswerOutput:
        start, end = self.qa_outputs(self.distilbert(input_ids, attention_mask)).unbind(dim=-1)
        return AnswerOutput(start.contiguous(), end.contiguous())


class TokenClassifier(Model):
    """``DistilBertForTokenClassification``: label logits for every token, ``[rows, tokens, labels]``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        return ClassifierOutput(self.classifier(self.distilbert(input_ids, attention_mask)))


HEADS: dict[str, type[Model]] = {
    "sequence_classifier": SequenceClassifier,
    "question_answerer": QuestionAnswerer,
    "token_classifier": TokenClassifier,
}


def load(directory: Path, head: str) -> Model | None:
    """The checkpoint in ``directory`` as ``HEADS[head]``, fp32 on the CPU, in eval mode; None when it is
    not a DistilBERT checkpoint this module reproduces exactly (transformers then loads it)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    raw = json.loads((directory / "config.json").read_text())
    if raw.get("model_type") != "distilbert" or "auto_map" in raw or raw.get("activation", "gelu") not in ACTIVATIONS:
        return None
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    if config.dim % config.n_heads:
        return None
    with torch.device("meta"):  # shapes only: the checkpoint's tensors are assigned below
        model = HEADS[head](config)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    # Names and shapes from the headers first: a checkpoint left to transformers is not read twice.
    # (SIM118: safe_open is no mapping; keys() is its listing.)
    with ExitStack() as files:
        handles = [files.enter_context(safe_open(str(path), "pt")) for path in sorted(directory.glob("*.safetensors"))]
        holders = {name: handle for handle in handles for name in handle.keys() if name != OLD_POSITION_IDS}  # noqa: SIM118
        if {name: torch.Size(handle.get_slice(name).get_shape()) for name, handle in holders.items()} != expected:
            return None
        model.load_state_dict({name: handle.get_tensor(name).float() for name, handle in holders.items()}, assign=True)
    return model.eval()
