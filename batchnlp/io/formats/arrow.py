"""Arrow IPC: the *file* format (Feather v2), uncompressed, output only.

``pyarrow.dataset(format="arrow")`` and ``polars.read_ipc`` read only the file format (not the
stream format); ``datasets.load_dataset("arrow")`` reads both. batchnlp's metadata goes in the
schema's key-value metadata under ``batchnlp``, as in Parquet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import pyarrow as pa

from batchnlp.io.formats.base import Format


def write(table: pa.Table, metadata: Mapping[str, Any], compression: str = "none") -> bytes:
    """An Arrow IPC file (not stream): the variant pyarrow.dataset, polars and datasets all read."""
    merged = {**(table.schema.metadata or {}), b"batchnlp": json.dumps(metadata, sort_keys=True).encode()}
    table = table.replace_schema_metadata(merged)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def head(part: IO[bytes], n: int, compression: str) -> list[dict[str, Any]]:
    """The first ``n`` rows of a part."""
    return pa.ipc.open_file(part).read_all().slice(0, n).to_pylist()


FORMAT = Format(name="arrow", suffix=".arrow", compressions=("none",), write=write, head=head)
