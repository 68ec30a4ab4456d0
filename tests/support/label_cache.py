"""Label cache entries for tests: keys as a run makes them, and entries with a struct value."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from batchnlp.ledger.label_cache import KEY_TYPE

VALUE_TYPE = pa.struct([("label", pa.string()), ("score", pa.float32())])
SENTIMENT = "5e47"  # a namespace (hex), as a run derives it from a task's settings
TOPICS = "70b1"
DESCRIPTIONS = {
    SENTIMENT: {"task": "sentiment", "model": "s3://models/sst2", "model_digest": "sha256:aa11"},
    TOPICS: {"task": "classify", "model": "s3://models/topics", "model_digest": "sha256:bb22"},
}


def key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def keys(ids: Iterable[int], sort: bool = True) -> pa.Array:
    """The keys of texts ``text-<id>``, sorted (as a lookup wants them) unless told otherwise."""
    array = pa.array([key(f"text-{i}") for i in ids], KEY_TYPE)
    return array.take(pc.sort_indices(array)) if sort else array


def value(i: int) -> dict:
    return {"label": "positive" if i % 2 else "negative", "score": (i % 100) / 100}


def entries(ids: Iterable[int], key_of=None) -> pa.Table:
    """Cache entries for ``ids``: key, a struct value that depends on the id, tokens = the id."""
    ids = list(ids)
    raw = [key_of(i) if key_of else key(f"text-{i}") for i in ids]
    return pa.table(
        {
            "key": pa.array(raw, KEY_TYPE),
            "value": pa.array([value(i) for i in ids], VALUE_TYPE),
            "tokens": pa.array(ids, pa.int64()),
        }
    )


def ranged_key(band: int, i: int) -> bytes:
    """A key in band ``band`` of 256 (its first byte), distinct per ``i``: files of disjoint key ranges."""
    return bytes([band]) + hashlib.blake2b(f"{band}-{i}".encode(), digest_size=15).digest()
