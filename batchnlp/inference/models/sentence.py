"""A checkpoint's sentence-transformers settings: how token vectors become one sentence embedding.

Read from the files sentence-transformers saves beside the encoder (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``) when present: the pooling (mean, CLS or
max over the tokens the attention mask keeps), whether a ``Normalize`` module scales each embedding
to unit length, and the maximum sequence length. A plain encoder checkpoint (no such files) gets mean
pooling, no normalisation and its tokenizer's maximum length. Torch-free: the driver reads these to
know the output column's type before any weights load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelError

POOLINGS = ("mean", "cls", "max")
# 1_Pooling/config.json's flags → our pooling names; sentence-transformers' other modes are refused.
POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
POOLING_MODULE = "sentence_transformers.models.Pooling"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"


@dataclass(frozen=True)
class SentenceSettings:
    """How an encoder's last hidden state becomes one embedding per text."""

    dimension: int  # the encoder's hidden size: the embedding's length
    pooling: str = "mean"  # one of POOLINGS
    normalize: bool = False  # a Normalize module: each embedding scaled to unit L2 norm
    max_seq_length: int | None = None  # sentence_bert_config.json's; None: the tokenizer's


def read_settings(directory: Path | str, ref: str | None = None) -> SentenceSettings:
    """The settings of the checkpoint in ``directory`` (:class:`SentenceSettings`); a
    :class:`ModelError` names what cannot be used (a pooling mode or a module batchnlp does not run)."""
    return _read(Path(directory).resolve(), ref or str(directory))


@lru_cache(maxsize=32)
def _read(directory: Path, ref: str) -> SentenceSettings:
    config = _json(directory / "config.json", ref)
    dimension = config.get("hidden_size", config.get("dim"))
    if not isinstance(dimension, int):
        raise ModelError(f"model {ref!r} has no hidden_size (or dim) in its config.json: it is no encoder")
    modules = _json(directory / "modules.json", ref) if (directory / "modules.json").is_file() else None
    if modules is None:
        return SentenceSettings(dimension=dimension)
    pooling, normalize = "mean", False
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = module.get("type", "")
        if kind == TRANSFORMER_MODULE:
            continue
        if kind == POOLING_MODULE:
            path = directory / module.get("path", "") / "config.json"
            if not path.is_file():
                raise ModelError(
                    f"model {ref!r} names a Pooling module in modules.json, but its {path.relative_to(directory)} is "
                    "missing: copy the checkpoint again with its module folders (batchnlp models pull does)"
                )
            pooling = _pooling(_json(path, ref), ref)
        elif kind == NORMALIZE_MODULE:
            normalize = True
        else:
            raise ModelError(
                f"model {ref!r} has a sentence-transformers module batchnlp does not run ({kind or module!r} in "
                f"modules.json); it runs a Transformer, then Pooling (mean, CLS or max), then Normalize"
            )
    st_config = directory / "sentence_bert_config.json"
    max_seq_length = _json(st_config, ref).get("max_seq_length") if st_config.is_file() else None
    return SentenceSettings(dimension, pooling, normalize, max_seq_length)


def _pooling(config: dict[str, Any], ref: str) -> str:
    modes = [name for flag, name in POOLING_FLAGS.items() if config.get(flag)]
    others = [
        flag for flag, on in config.items() if flag.startswith("pooling_mode") and on and flag not in POOLING_FLAGS
    ]
    if len(modes) != 1 or others:
        raise ModelError(
            f"model {ref!r} pools with {', '.join(modes + others) or 'no mode'} (1_Pooling/config.json); batchnlp "
            "runs one of mean, CLS or max pooling"
        )
    return modes[0]


def _json(path: Path, ref: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path.name} of model {ref!r}: {e}") from e
