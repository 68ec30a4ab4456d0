"""What a table run's one commit costs on top of its data files: Delta Lake and Iceberg, local disk.

    python benchmarks/table_commit.py                  # 10, 100 and 1,000 staged files
    python benchmarks/table_commit.py --files 5000

For each count, writes that many small Parquet files into a run's staging directory, then times
:meth:`batchnlp.io.tables.TableSink.publish` (the idempotency check, the schema check and the one
commit that adds every file in place) on a fresh table and on the same table again with a second
run id, and the idempotency check alone (what a retried job pays before it exits 0). Iceberg uses
the embedded SQLite catalog. Prints seconds; timing lives here, never in a test's assertions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from batchnlp.io.formats.writers import PARQUET_ZSTD
from batchnlp.io.storage import Location
from batchnlp.io.tables.base import DataFile, TableSink
from batchnlp.io.tables.delta import DeltaSink
from batchnlp.io.tables.iceberg import IcebergSink

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("_error", pa.string())])


def stage(sink: TableSink, run_id: str, files: int) -> list[DataFile]:
    """``files`` Parquet parts of 100 rows in the run's staging directory, as the commit adds them."""
    staging = sink.staging(run_id)
    root = Path(staging.path)
    root.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(files):
        table = pa.table({"id": range(i * 100, i * 100 + 100), "text": ["x"] * 100, "_error": [None] * 100}, SCHEMA)
        data = PARQUET_ZSTD.write(table, {})
        (root / f"part-{i:05d}.parquet").write_bytes(data)
        parts.append(DataFile(f"part-{i:05d}.parquet", 100, len(data), {}))
    return parts


def timed(action) -> float:
    clock = time.perf_counter()
    action()
    return time.perf_counter() - clock


def measure(sink: TableSink, files: int) -> tuple[float, float, float]:
    first, second = stage(sink, "run-1", files), stage(sink, "run-2", files)
    create = timed(lambda: sink.publish("run-1", sink.staging("run-1"), first, SCHEMA, ()))
    append = timed(lambda: sink.publish("run-2", sink.staging("run-2"), second, SCHEMA, ()))
    check = timed(lambda: sink.committed("run-1"))
    return create, append, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    print(f"{'format':8} {'files':>6} {'create+commit s':>16} {'append commit s':>16} {'run id check s':>15}")
    for files in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            sinks = {
                "delta": DeltaSink(Location(f"{tmp}/delta", {})),
                "iceberg": IcebergSink(
                    "bench.labels",
                    ("bench", {"type": "sql", "uri": f"sqlite:///{tmp}/catalog.db", "warehouse": f"file://{tmp}/wh"}),
                    {},
                ),
            }
            for name, sink in sinks.items():
                create, append, check = measure(sink, files)
                print(f"{name:8} {files:>6} {create:>16.3f} {append:>16.3f} {check:>15.3f}")


if __name__ == "__main__":
    main()
