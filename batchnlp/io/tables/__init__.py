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

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from batchnlp.errors import SpecError
from batchnlp.io.formats.hive import relative_segments
from batchnlp.io.tables.base import DataFile, TableFiles, TableSink

if TYPE_CHECKING:
    from batchnlp.ledger.record import Manifest
    from batchnlp.spec import JobSpec


@dataclass(frozen=True)
class TableFormat:
    """One lake table format, as the spec, the CLI and the run know it before its library is imported.

    Its module holds the rest: a :class:`~batchnlp.io.tables.base.TableSink` that commits runs to the
    table and reads a snapshot of it as input, importing ``package`` only inside its methods.
    """

    name: str  # the --input-format/--output-format value, and the extra that installs it: batchnlp[name]
    title: str  # as messages name the format: "Iceberg output", "a Delta version"
    sink: str  # dotted path of its TableSink subclass
    package: str  # the optional library its module imports
    addressed_by: Literal["path", "name"]  # INPUT/OUTPUT: a directory or s3:// prefix, or namespace.table in --catalog
    version_word: str  # what it calls a commit (--table-version reads one): the sink's version_kind
    partition_by: bool = True  # --partition-by applies (else the table partitions itself)
    rewrites: str | None = None  # dotted path: its commits that only moved rows, for --incremental

    @property
    def install(self) -> str:
        return f"pip install 'batchnlp[{self.name}]'"


# The one list of table formats: the spec's and the CLI's choices and every rule that differs by
# format come from it, so adding a table format is one module and one line here. Dotted paths, as
# fsspec's known_implementations, so naming a format imports neither its module nor its library.
TABLES: dict[str, TableFormat] = {
    t.name: t
    for t in (
        TableFormat(
            "delta", "Delta", "batchnlp.io.tables.delta.DeltaSink", "deltalake", "path", "version",
            rewrites="batchnlp.io.tables.delta.rewrites",
        ),
        TableFormat(
            "iceberg", "Iceberg", "batchnlp.io.tables.iceberg.IcebergSink", "pyiceberg", "name", "snapshot",
            partition_by=False,
        ),
    )
}  # fmt: skip


def load(path: str) -> Any:
    """The class or function a registry entry's dotted path names (its module imported now)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def sink_class(fmt: str) -> type[TableSink]:
    """The TableSink of table format ``fmt``, once its library is known to be installed."""
    require(fmt)
    return load(TABLES[fmt].sink)


def open_sink(spec: JobSpec) -> TableSink:
    """The sink for ``--output-format`` of a table; its library is imported only here."""
    return sink_class(spec.output_format or "").for_output(spec)


def read_table(spec: JobSpec) -> TableFiles:
    """The data files of an ``--input-format`` table at ``--table-version`` (or the latest)."""
    return sink_class(spec.input_format or "").read_input(spec)


def require(fmt: str) -> None:
    """The table format's library is installed (an optional extra), or a SpecError says how to get it."""
    table = TABLES[fmt]
    if importlib.util.find_spec(table.package) is None:
        raise SpecError(f"format {fmt} needs the {table.package} package: {table.install}")


def data_files(manifest: Manifest) -> list[DataFile]:
    """Every file a sealed run wrote, from its manifest, with its partition values decoded from its path."""
    files = []
    for part in manifest.parts:
        if part.files:
            files += [DataFile(f["path"], f["rows"], f["bytes"], relative_segments(f["path"])) for f in part.files]
        elif part.path:
            files.append(DataFile(part.path, part.rows, part.bytes, {}))
    return files
