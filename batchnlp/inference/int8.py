"""int8 inference on CPU: weights with one scale per output channel, activations with one per token.

``torch.ao.quantization.quantize_dynamic`` (deprecated since torch 2.10) scales each Linear's
input by one number for the whole batch, so a row's result depended on its batch mates: the same
text labelled differently in two batches. Here each token is scaled by its own largest value, so
a row's int8 result is the same whatever it is batched with (integer matrix products are exact),
and a token with small activations is not crushed by a loud neighbour's scale, which keeps more
labels. The int8 × int8 → int32 product is ``torch._int_mm`` (oneDNN/VNNI where the CPU has them),
as fast as fbgemm's dynamic kernel here.
"""

from __future__ import annotations

from typing import Any

import torch

from batchnlp.util.compat import int8_matmul

# int8 covers -127..127 symmetrically (-128 is left out so that negating never overflows).
LEVELS = 127.0


class Int8Linear(torch.nn.Module):
    """A Linear with int8 weights, run on int8 activations quantised per token."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / LEVELS
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / LEVELS
        quantised = torch.round(rows / scale).to(torch.int8)
        out = int8_matmul(quantised, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token"


# Layers that read one token per row (BERT's pooler; the task heads, outside the base model): cheap in
# fp32, and where a quantisation error reaches the scores undamped.
KEPT_IN_FP32 = ("pooler",)


def quantise(model: Any) -> Any:
    """``model`` with the ``torch.nn.Linear`` layers of its encoder (``model.base_model``, less its
    pooler) replaced by :class:`Int8Linear` ones, in place; returned. The task head stays fp32."""
    _replace_linears(getattr(model, "base_model", model))
    return model


def _replace_linears(module: Any) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Int8Linear(child))
        elif name not in KEPT_IN_FP32:
            _replace_linears(child)
