"""Lake tables (Delta Lake, Apache Iceberg) as a job's output: a file run plus one commit.

A table run writes Parquet data files and its control files (progress records, manifest,
report, lock) into a staging directory of its own inside the table, ``batchnlp-runs/<run id>/``,
with every guarantee of a file run: deterministic parts, ``--resume``, a manifest sealed by
``_SUCCESS``. Then the driver makes **one** table commit that adds every data file where it
lies — nothing is copied, no row passes through the driver — and records the run id in it
(Delta: an app transaction and commit metadata; Iceberg: the snapshot summary).

The table decides idempotency: a run id it already holds is never committed again, so a
retried scheduled job (same ``--run-id``) exits 0. A driver killed before the commit leaves
files the table does not reference; the same run id (or ``--resume``) finds the staging
directory, keeps its intact parts and commits once.

Staging directories are not hidden (no leading ``_``): they hold the table's data files, and
table maintenance (Delta ``VACUUM``, Iceberg orphan-file removal) skips hidden paths, so files
a later compaction replaced would otherwise never be cleaned up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchnlp.errors import SpecError
from batchnlp.formats.hive import relative_segments
from batchnlp.storage import Location
from batchnlp.tables.base import DataFile, TableFiles, TableSink

if TYPE_CHECKING:
    from batchnlp.record import Manifest
    from batchnlp.spec import JobSpec


def open_sink(spec: JobSpec) -> TableSink:
    """The sink for ``--output-format delta|iceberg``; their libraries are imported only here."""
    require(spec.output_format)
    if spec.output_format == "delta":
        from batchnlp.tables.delta import DeltaSink

        return DeltaSink(Location(spec.output, spec.storage_options))
    from batchnlp.tables.iceberg import IcebergSink

    return IcebergSink(spec.output, (spec.catalog, dict(spec.catalog_options)), dict(spec.storage_options))


def read_table(spec: JobSpec) -> TableFiles:
    """The data files of ``--input-format delta|iceberg`` at ``--table-version`` (or the latest)."""
    require(spec.input_format or "")
    if spec.input_format == "delta":
        from batchnlp.tables import delta

        return delta.read_snapshot(Location(spec.input, spec.storage_options), spec.table_version)
    from batchnlp.tables import iceberg

    catalog = (spec.catalog, dict(spec.catalog_options))
    return iceberg.read_snapshot(spec.input, catalog, spec.table_version, dict(spec.storage_options))


def require(fmt: str) -> None:
    """The table format's library is installed (an optional extra), or a SpecError says how to get it."""
    import importlib.util

    module = {"delta": "deltalake", "iceberg": "pyiceberg"}[fmt]
    if importlib.util.find_spec(module) is None:
        raise SpecError(f"format {fmt} needs the {module} package: pip install 'batchnlp[{fmt}]'")


def data_files(manifest: Manifest) -> list[DataFile]:
    """Every file a sealed run wrote, from its manifest, with its partition values decoded from its path."""
    files = []
    for part in manifest.parts:
        if part.files:
            files += [DataFile(f["path"], f["rows"], f["bytes"], relative_segments(f["path"])) for f in part.files]
        elif part.path:
            files.append(DataFile(part.path, part.rows, part.bytes, {}))
    return files
