"""Output formats: one part file per unit, as Parquet, Arrow IPC or JSON Lines.

Every writer is deterministic (same table and metadata in, same bytes out: no timestamps, gzip
mtime 0), so a retried unit rewrites the same part and ``--resume`` can check it by sha256.

- ``parquet``: zstd (default), snappy or none; batchnlp's metadata in the schema's key-value
  metadata under ``batchnlp``.
- ``arrow``: the Arrow IPC *file* format (Feather v2), uncompressed, metadata as in Parquet.
  ``pyarrow.dataset(format="arrow")`` and ``polars.read_ipc`` read only the file format (not the
  stream format); ``datasets.load_dataset("arrow")`` reads both.
- ``jsonl``: one JSON object per row (UTF-8, keys in column order), optionally gzip. Structs are
  objects, lists arrays, maps arrays of ``[key, value]`` pairs, nulls null; NaN and ±infinity are
  null (JSON has none); dates, times and timestamps ISO 8601 strings; durations seconds;
  decimals strings (exact); binary base64. JSON has no place for metadata: the manifest has it.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import gzip
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchnlp.formats import parquet

OUTPUT_FORMATS = ("parquet", "arrow", "jsonl")
COMPRESSIONS = {"parquet": ("zstd", "snappy", "none"), "arrow": ("none",), "jsonl": ("none", "gzip")}
DEFAULT_COMPRESSION = {"parquet": "zstd", "arrow": "none", "jsonl": "none"}
SUFFIXES = {"parquet": ".parquet", "arrow": ".arrow", "jsonl": ".jsonl"}


@dataclass(frozen=True)
class OutputFormat:
    """How every part of a job is written."""

    format: str = "parquet"
    compression: str = "zstd"

    @property
    def suffix(self) -> str:
        """``.parquet``, ``.arrow``, ``.jsonl`` or ``.jsonl.gz``."""
        return SUFFIXES[self.format] + (".gz" if self.compression == "gzip" else "")

    def write(self, table: pa.Table, metadata: Mapping[str, Any]) -> bytes:
        """Serialise one part: same table and metadata in, same bytes out."""
        if self.format == "parquet":
            return parquet.write(table, metadata, self.compression)
        if self.format == "arrow":
            return write_arrow(table, metadata)
        data = write_jsonl(table)
        return gzip.compress(data, compresslevel=6, mtime=0) if self.compression == "gzip" else data

    def describe(self) -> dict[str, str]:
        """For the manifest."""
        return {"format": self.format, "compression": self.compression, "suffix": self.suffix}


PARQUET_ZSTD = OutputFormat()


def write_arrow(table: pa.Table, metadata: Mapping[str, Any]) -> bytes:
    """An Arrow IPC file (not stream): the variant pyarrow.dataset, polars and datasets all read."""
    merged = {**(table.schema.metadata or {}), b"batchnlp": json.dumps(metadata, sort_keys=True).encode()}
    table = table.replace_schema_metadata(merged)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_jsonl(table: pa.Table) -> bytes:
    """One compact JSON object per row, ``\\n``-terminated (rules in the module docstring)."""
    out = io.StringIO()
    for batch in table.to_batches(max_chunksize=8192):
        for row in batch.to_pylist():
            try:
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_value)
            except ValueError:  # a NaN or infinity somewhere in the row: the slow path
                line = json.dumps(_finite(row), ensure_ascii=False, separators=(",", ":"), default=_json_value)
            out.write(line)
            out.write("\n")
    return out.getvalue().encode()


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
