"""What makes two rows the same question for a task: its input key.

A task's answer depends on the row's text (for qa: its question too), on the model's weights, and
on every setting that changes the output column (the task's own, the max length, and how the
model runs: device, precision, backend). The settings and the weights' digest hash into the task's
**namespace**; a row's **key** is a 16-byte BLAKE2b of the namespace and the row's inputs, exact
bytes, no normalisation. Rows with equal keys get the same answer, so a run labels each key once
(:mod:`batchnlp.execution.distinct`) and the label cache (:mod:`batchnlp.ledger.label_cache`)
serves a key labelled on an earlier night. A changed model or setting changes the namespace, so
its keys miss by construction: nothing is served from another model's labels.

:data:`LABELS_VERSION` is in every namespace: a batchnlp release that changes what a task writes
for the same inputs (a decoding fix) bumps it, and every cache entry of an older release misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.util.redaction import redact_url

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec

LABELS_VERSION = 1
KEY_BYTES = 16
KEY_TYPE = pa.binary(KEY_BYTES)


def namespace(spec: TaskSpec, digest: str, engine: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The task's namespace (32 hex digits) and the description it hashes, which the label cache
    keeps so that ``batchnlp cache inspect`` can say whose labels it holds (and ``compact --model``
    find them).

    ``digest``: the model's content digest (``sha256:…``, as ``batchnlp models digest`` prints it);
    ``engine``: how it runs (device, precision, backend, max length) as the worker resolved it,
    never ``auto``.
    """
    # Settings at their defaults are left out, so a setting added to TaskSpec later (at its default)
    # keeps every existing namespace, and the labels cached under it, as they were.
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    settings = {
        key: value
        for key, value in dataclasses.asdict(spec).items()
        if key not in ("name", "model") and value != defaults[key]
    }
    description = {
        "labels_version": LABELS_VERSION,
        "task": spec.kind,
        "model": redact_url(spec.model),
        "model_digest": digest,
        "settings": settings,
        "engine": dict(engine),
    }
    hashed = {key: value for key, value in description.items() if key != "model"}  # a ref is a name, not content
    return hashlib.blake2b(json.dumps(hashed, sort_keys=True).encode(), digest_size=16).hexdigest(), description


def input_keys(space: str, texts: list[str], extra: list[list[Any]] | None = None) -> pa.FixedSizeBinaryArray:
    """One key per text: the namespace, the text and, row by row, each of ``extra``'s columns
    (qa's questions), each input's UTF-8 bytes preceded by their length."""
    prefix = bytes.fromhex(space)
    columns = [texts, *(extra or [])]
    keys = bytearray()
    for values in zip(*columns, strict=True):
        digest = hashlib.blake2b(prefix, digest_size=KEY_BYTES)
        for value in values:
            data = str(value).encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        keys += digest.digest()
    return pa.FixedSizeBinaryArray.from_buffers(KEY_TYPE, len(texts), [None, pa.py_buffer(bytes(keys))])


def key_matrix(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The keys' bytes as a ``[keys, 16]`` uint8 matrix, without copying where they are one chunk."""
    array = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if not len(array):
        return np.zeros((0, KEY_BYTES), np.uint8)
    start = array.offset * KEY_BYTES
    return np.frombuffer(array.buffers()[1], dtype=np.uint8)[start : start + len(array) * KEY_BYTES].reshape(
        -1, KEY_BYTES
    )


def key_prefixes(keys: pa.Array) -> np.ndarray:
    """Each key's first 8 bytes as a big-endian unsigned integer: keys in byte order are in this order."""
    return key_matrix(keys)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def bucket_of(keys: pa.FixedSizeBinaryArray, buckets: int) -> np.ndarray:
    """Each key's bucket out of ``buckets``: ranges of the key space, so one bucket's keys lie in one
    key range (a label cache lookup reads only the files and row groups of that range)."""
    return ((key_prefixes(keys) >> np.uint64(32)) * np.uint64(buckets) >> np.uint64(32)).astype(np.int64)
