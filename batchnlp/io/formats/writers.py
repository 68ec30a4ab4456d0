"""How every part of a job is written: a format of the registry and its compression.

Every writer is deterministic (same table and metadata in, same bytes out: no timestamps, gzip
mtime 0), so a retried unit rewrites the same part and ``--resume`` can check it by sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchnlp.io.formats import FORMATS


@dataclass(frozen=True)
class OutputFormat:
    """How every part of a job is written."""

    format: str = "parquet"
    compression: str = "zstd"

    @property
    def suffix(self) -> str:
        """``.parquet``, ``.arrow``, ``.jsonl`` or ``.jsonl.gz``."""
        return FORMATS[self.format].suffix + (".gz" if self.compression == "gzip" else "")

    def write(self, table: pa.Table, metadata: Mapping[str, Any]) -> bytes:
        """Serialise one part: same table and metadata in, same bytes out."""
        return FORMATS[self.format].write(table, metadata, self.compression)

    def describe(self) -> dict[str, str]:
        """For the manifest."""
        return {"format": self.format, "compression": self.compression, "suffix": self.suffix}

    @classmethod
    def of_part(cls, name: str) -> OutputFormat:
        """How the part file ``name`` was written, from its suffix."""
        for fmt in FORMATS.values():
            for compression in fmt.compressions:
                if name.endswith(cls(fmt.name, compression).suffix):
                    return cls(fmt.name, compression)
        raise ValueError(f"{name} is not a part file batchnlp writes")


PARQUET_ZSTD = OutputFormat()
