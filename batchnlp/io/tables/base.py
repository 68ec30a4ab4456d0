"""What every lake table shares: the sink interface a run commits through, the records of a
commit and of a snapshot read as input, and the schema comparison both formats use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchnlp.errors import OutputError
from batchnlp.io.formats.hive import Partitioning
from batchnlp.io.layout import JOB_RECORD, PROGRESS
from batchnlp.io.storage import InputFile, Location

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

RUN_ID_PROPERTY = "batchnlp.run_id"  # commit metadata (Delta) / snapshot summary key (Iceberg)
RUNS = "batchnlp-runs"  # staging directories, one per run id, inside the table's location
STARTED = f"{PROGRESS}/{JOB_RECORD}"  # what a started run leaves in its staging directory


@dataclass(frozen=True)
class DataFile:
    """One Parquet file a run wrote, to be added to the table."""

    path: str  # relative to the run's staging directory
    rows: int
    bytes: int
    partition: dict[str, str | None]  # --partition-by values as Hive wrote them (None: null)


@dataclass(frozen=True)
class TableFiles:
    """A table snapshot as a job's input: its data files, their partition values, what was read."""

    location: Location  # the table's root: data file paths are fsspec paths of its filesystem
    files: list[InputFile]
    partitioning: Partitioning | None  # Delta: partition values live in the log, not in the files...
    partition_values: dict[str, dict[str, str | None]]  # ...so each file's: fsspec path → key → value as text
    described: dict[str, Any]  # for the manifest: format, table, version or snapshot id


@dataclass(frozen=True)
class Rewrite:
    """A commit that moved rows between data files without changing them (Delta's ``dataChange: false``:
    OPTIMIZE, Z-order): the rows of the files it added are those of the files it removed."""

    version: int
    removed: frozenset[str]  # fsspec paths, as the format's snapshot read names files
    added: dict[str, int]  # fsspec path → size in bytes


@dataclass(frozen=True)
class Commit:
    """What the table holds for a run: the version (Delta) or snapshot id (Iceberg) that added its files."""

    table: str  # the table as messages show it
    version: int
    new: bool  # False: an earlier attempt had committed this run id already
    kind: str = "version"  # what the table calls ``version``: "version" (Delta) or "snapshot" (Iceberg)

    def describe(self) -> dict[str, Any]:
        return {"table": self.table, "version": self.version, "kind": self.kind, "committed_now": self.new}


class TableSink(ABC):
    """An output table: where a run stages its files, and how they are committed once."""

    version_kind = "version"  # what the table calls a commit: a Delta version, an Iceberg snapshot

    @classmethod
    @abstractmethod
    def for_output(cls, spec: JobSpec) -> TableSink:
        """The sink for the spec's OUTPUT (a table of this format)."""

    @classmethod
    @abstractmethod
    def read_input(cls, spec: JobSpec) -> TableFiles:
        """The data files of the spec's INPUT table at its ``table_version`` (None: the latest)."""

    @abstractmethod
    def display(self) -> str:
        """The table as messages name it."""

    @abstractmethod
    def root(self) -> Location:
        """The table's location; run staging directories are made under it."""

    @abstractmethod
    def committed(self, run_id: str) -> int | None:
        """The version/snapshot holding ``run_id``'s commit, or None when the table has none."""

    @abstractmethod
    def check(self, schema: pa.Schema, partition_by: tuple[str, ...]) -> None:
        """Raise OutputError when rows of ``schema`` cannot be appended to the table as it is."""

    @abstractmethod
    def commit(
        self, run_id: str, staging: Location, files: list[DataFile], schema: pa.Schema, partition_by: tuple[str, ...]
    ) -> int:
        """Add ``files`` to the table in one commit recording ``run_id``; return its version/snapshot."""

    def staging(self, run_id: str) -> Location:
        """The run's own directory in the table: its data files and its control files."""
        root = self.root()
        return root.under(f"{RUNS}/{run_id}")

    def pending_runs(self) -> list[str]:
        """Run ids that staged files (a job record exists) but have no commit in the table."""
        fs, path = self.root().split()
        found = fs.glob(f"{path.rstrip('/')}/{RUNS}/*/{STARTED}")
        runs = sorted({p[: -len(STARTED) - 1].rsplit("/", 1)[-1] for p in found})
        return [run for run in runs if self.committed(run) is None]

    def publish(
        self, run_id: str, staging: Location, files: list[DataFile], schema: pa.Schema, partition_by: tuple[str, ...]
    ) -> Commit:
        """Commit a sealed run's files unless the table already holds the run id (checked last thing)."""
        version = self.committed(run_id)
        if version is not None:
            return Commit(self.display(), version, False, self.version_kind)
        self.check(schema, partition_by)  # the table may have changed since the run started
        version = self.commit(run_id, staging, files, schema, partition_by)
        return Commit(self.display(), version, True, self.version_kind)


def compare_schemas(table: str, existing: pa.Schema, ours: pa.Schema) -> None:
    """Names and types must match (large/small variants and nullability aside), else OutputError names each."""
    have = {f.name: _plain(f.type) for f in existing}
    want = {f.name: _plain(f.type) for f in ours}
    problems = [f"{n} is {have[n]} in the table but {want[n]} here" for n in want if n in have and have[n] != want[n]]
    missing = [name for name in want if name not in have]
    extra = [name for name in have if name not in want]
    if missing:
        problems.append(f"the table has no column {', '.join(missing)}")
    if extra:
        problems.append(f"this job writes no column {', '.join(extra)}")
    if problems:
        raise OutputError(
            f"the job's rows do not fit {table}: {'; '.join(problems)}. Point the job at a new table, "
            "or change the input or tasks so the columns match (the table keeps its schema; nothing was written)"
        )


def _plain(kind: pa.DataType) -> str:
    """A type as table formats distinguish types: large and small variants are one, nullability ignored."""
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return "binary"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return f"list<{_plain(kind.value_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ", ".join(f"{f.name}: {_plain(f.type)}" for f in kind) + ">"
    if pa.types.is_map(kind):
        return f"map<{_plain(kind.key_type)}, {_plain(kind.item_type)}>"
    if pa.types.is_timestamp(kind):
        return "timestamp" + ("[tz]" if kind.tz else "")
    if pa.types.is_dictionary(kind):
        return _plain(kind.value_type)
    return str(kind)
