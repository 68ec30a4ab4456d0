"""A small Hive-partitioned Parquet input (`date=…/lang=…`) shared by the output-format tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LAYOUT = {("2026-11-24", "de"): [0, 1, 2], ("2026-11-24", "en"): [3, 4], ("2026-11-25", "en"): [5, 6, 7]}
TEXTS = {i: f"review {i}: {'great' if i % 2 else 'awful'} product" for i in range(8)} | {2: None}


def hive_parquet(root: Path) -> Path:
    for (date, lang), ids in LAYOUT.items():
        folder = root / f"date={date}" / f"lang={lang}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids, "text": [TEXTS[i] for i in ids]}), folder / "part-0.parquet")
    return root
