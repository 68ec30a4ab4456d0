"""Where a run's rows go: one interface for part files, a Delta table and an Iceberg table.

An :class:`Output` is opened from the spec on the driver and *bound* to a run id there
(:meth:`Output.prepare`); the bound output is small and picklable, travels to every worker,
and :meth:`Output.write` puts a unit's rows (one part, Hive-partitioned files, and its
quarantined bad lines) under the run's directory with deterministic names and bytes. Back on
the driver, :meth:`Output.commit` seals the run (``_manifest.json``, ``_SUCCESS``) and, for a
table, makes its one table commit.

The three differ only where they really differ: where a run's files live (OUTPUT itself, or a
staging directory inside the table), what says a run is done already (a sealed OUTPUT of the
same job, or the table's record of the run id), and the table commit. The runner has no
branch on which one it holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchnlp.errors import OutputError
from batchnlp.io.formats import BadLine, WorkUnit
from batchnlp.io.formats.hive import directory
from batchnlp.io.layout import REJECTED, SUCCESS
from batchnlp.io.storage import Location, storage_errors, write_atomic
from batchnlp.ledger import ownership
from batchnlp.ledger.commit import Committer, sha256
from batchnlp.ledger.record import JobRecord, Manifest, decode_schema
from batchnlp.util.redaction import redact_url

if TYPE_CHECKING:
    from batchnlp.io.tables.base import Commit, TableSink
    from batchnlp.spec import JobSpec

logger = logging.getLogger(__name__)

INCREMENTAL_RUN = "run_id"  # --incremental part files: OUTPUT/run_id=<ID>/, a partition column for readers


@dataclass(frozen=True, kw_only=True)
class Written:
    """What :meth:`Output.write` put under the run's directory for one unit."""

    part: str  # the part file's URL; empty with --partition-by (see files) or when the unit had no rows
    bytes: int
    sha256: str  # of the part file's bytes (of no bytes when there is none)
    files: list[dict[str, Any]]  # --partition-by: path (relative to the run's directory), rows, bytes, sha256
    quarantine: dict[str, Any] | None  # _rejected/part-NNNNN.jsonl: path, lines, bytes, sha256


@dataclass(frozen=True)
class Output(ABC):
    """A job's destination; bound to one run by :meth:`prepare` (``run_id`` set)."""

    spec: JobSpec
    run_id: str = ""
    location: Location | None = None  # the run's directory: its parts and control files (progress, lock, ...)

    # What a user does when a changed job cannot resume this output.
    restart = "use --overwrite to start again"

    # Driver, before the run.

    @abstractmethod
    def prepare(self) -> Output:
        """This output bound to the run's id: the one given, an interrupted run's, or a new one."""

    def committed(self) -> Commit | None:
        """What already holds this run id, so it must not run again; None for part files."""
        return None

    def mode(self, committer: Committer) -> str:
        """The write mode this run takes: the spec's."""
        return self.spec.mode

    def check(self, schema: pa.Schema) -> None:  # noqa: B027 - part files take any columns
        """Raise OutputError when rows of the job's output ``schema`` cannot be written here."""

    def completed(self, committer: Committer, job: JobRecord, listing: list[dict[str, Any]]) -> Manifest | None:
        """The committed run that this one repeats (``job``, over the input files ``listing``), so
        nothing is left to do; None: run it. A table's record is :meth:`committed`."""
        return None

    def sealed(self, committer: Committer) -> Manifest | None:
        """A run sealed by an earlier attempt that only needs :meth:`commit` (a table's); else None."""
        return None

    @abstractmethod
    def covered_runs(self) -> list[Manifest]:
        """The other runs committed here, whose input an ``--incremental`` run leaves out (execution.incremental)."""

    # Worker.

    def write(self, unit: WorkUnit, table: pa.Table, metadata: dict[str, Any], bad_lines: list[BadLine]) -> Written:
        """Write one unit's annotated rows and (``--on-bad-lines quarantine``) its bad lines.

        Names come from the unit id, bytes from the rows alone: a retried unit rewrites the same
        files. A unit without rows writes no part.
        """
        fs, _ = self.location.split()
        form = self.spec.output_options
        quarantine = _quarantine(fs, self.location, unit, bad_lines) if self.spec.on_bad_lines == "quarantine" else None
        if table.num_rows and self.spec.partition_by:
            files = _write_partitioned(fs, self, unit, table, metadata)
            total = sum(f["bytes"] for f in files)
            return Written(part="", bytes=total, sha256=sha256(b""), files=files, quarantine=quarantine)
        if not table.num_rows:
            return Written(part="", bytes=0, sha256=sha256(b""), files=[], quarantine=quarantine)
        data = form.write(table, metadata)
        part = self.location.child(unit.id + form.suffix)
        write_atomic(fs, part, data)
        return Written(
            part=fs.unstrip_protocol(part), bytes=len(data), sha256=sha256(data), files=[], quarantine=quarantine
        )

    # Driver, after every unit.

    def commit(self, committer: Committer, manifest: Manifest) -> Commit | None:
        """Seal the run: ``_manifest.json``, then ``_SUCCESS`` (what readers of part files trust)."""
        if not committer.finished():
            ownership.clear_leftovers(self.location)
            committer.commit(manifest)
        return None


@dataclass(frozen=True)
class FilesOutput(Output):
    """Part files (Parquet, Arrow IPC, JSON Lines) under OUTPUT, trusted once ``_SUCCESS`` is there."""

    def prepare(self) -> Output:
        run_id = self.spec.run_id or new_run_id()
        location = Location(self.spec.output, self.spec.storage_options)
        if self.spec.incremental:  # each run a part set of its own: OUTPUT/run_id=ID/ (Hive-style)
            ownership.refuse_foreign_beside_runs(location, f"{INCREMENTAL_RUN}=")
            location = location.under(f"{INCREMENTAL_RUN}={run_id}")
        return dataclasses.replace(self, run_id=run_id, location=location)

    def covered_runs(self) -> list[Manifest]:
        root = Location(self.spec.output, self.spec.storage_options)
        fs, path = root.split()
        with storage_errors("list", root.display()):
            sealed = fs.glob(f"{path.rstrip('/')}/{INCREMENTAL_RUN}=*/{SUCCESS}")
        runs = [
            Committer(Location(fs.unstrip_protocol(marker.rsplit("/", 1)[0]), root.storage_options))
            for marker in sealed
        ]
        return [m for m in (committer.read_manifest() for committer in runs) if m.run_id != self.run_id]

    def completed(self, committer: Committer, job: JobRecord, listing: list[dict[str, Any]]) -> Manifest | None:
        """OUTPUT holds this run committed: asked to resume, named by its run id, or (no id given) the
        same spec over the same input files with the same models, such as a scheduler's retry of a job
        whose process died after its commit. Units are not compared: their automatic size depends on
        the machine."""
        if self.spec.mode == "overwrite" or not committer.finished():
            return None
        manifest = committer.read_manifest()
        if self.spec.mode == "resume" or self.spec.run_id:
            repeats = self.spec.mode == "resume" or manifest.run_id == self.spec.run_id
        else:
            committed = committer.previous_job()
            repeats = (
                committed is not None
                and committed.spec_fingerprint == job.spec_fingerprint
                and committed.model_versions == job.model_versions
                and manifest.input.get("files") == listing
            )
        return manifest if repeats else None


@dataclass(frozen=True)
class TableOutput(Output):
    """A Delta or Iceberg table: a run stages Parquet files in its own directory inside the table,
    seals them like a file run, then adds them all in one table commit that records its run id."""

    sink: TableSink | None = field(default=None, compare=False, repr=False)  # the driver's; workers get None

    restart = "give the job another --run-id to start a new run"

    def __getstate__(self) -> dict[str, Any]:
        """Workers only write files: the sink (an Iceberg catalog connection) stays on the driver."""
        return {**self.__dict__, "sink": None}

    def prepare(self) -> Output:
        run_id = self._run_id()
        return dataclasses.replace(self, run_id=run_id, location=self.sink.staging(run_id))

    def _run_id(self) -> str:
        """Given, an interrupted run's (--resume without --run-id), or new (with a warning: retries append)."""
        if self.spec.run_id:
            return self.spec.run_id
        sink = self.sink
        if self.spec.mode == "resume":
            pending = sink.pending_runs()
            if len(pending) > 1:
                raise OutputError(
                    f"{sink.display()} has {len(pending)} interrupted runs ({', '.join(pending)}); "
                    "pass --run-id ID with --resume to say which to finish"
                )
            if pending:
                return pending[0]
        logger.warning(
            "no --run-id: this run appends to %s under a new id, and so would a retry of it; "
            "give scheduled jobs a run id (run_id: ${run_date} in a spec) so a retry commits once",
            sink.display(),
        )
        return new_run_id()

    def committed(self) -> Commit | None:
        from batchnlp.io.tables.base import Commit

        sink = self.sink
        version = sink.committed(self.run_id)
        return None if version is None else Commit(sink.display(), version, False, sink.version_kind)

    def mode(self, committer: Committer) -> str:
        """An interrupted attempt of this run id is finished, whatever the spec's mode."""
        return "resume" if committer.previous_job() is not None else self.spec.mode

    def check(self, schema: pa.Schema) -> None:
        self.sink.check(schema, self.spec.partition_by)

    def sealed(self, committer: Committer) -> Manifest | None:
        """Files sealed, but the table commit died with its driver: commit them now."""
        return committer.read_manifest() if committer.finished() else None

    def covered_runs(self) -> list[Manifest]:
        """Runs staged here whose table commit happened (a staged run without one covers nothing)."""
        from batchnlp.io.tables.base import RUNS

        root = self.sink.root()
        fs, path = root.split()
        with storage_errors("list", root.display()):
            sealed = fs.glob(f"{path.rstrip('/')}/{RUNS}/*/{SUCCESS}")
        runs = [marker.rsplit("/", 2)[-2] for marker in sealed]
        return [
            Committer(self.sink.staging(run_id)).read_manifest()
            for run_id in runs
            if run_id != self.run_id and self.sink.committed(run_id) is not None
        ]

    def commit(self, committer: Committer, manifest: Manifest) -> Commit:
        from batchnlp.io.tables import data_files

        super().commit(committer, manifest)
        schema = decode_schema(manifest.schema["arrow"]) if manifest.schema else pa.schema([])
        return self.sink.publish(self.run_id, self.location, data_files(manifest), schema, self.spec.partition_by)


def open_output(spec: JobSpec) -> Output:
    """The output ``--output-format`` names: part files, or a table (its library checked now)."""
    if spec.table_output:
        from batchnlp.io.tables import open_sink

        return TableOutput(spec, sink=open_sink(spec))
    return FilesOutput(spec)


def new_run_id() -> str:
    """A fresh run id: UTC time to the second, then 8 random hex digits."""
    import uuid

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _write_partitioned(
    fs: Any, output: Output, unit: WorkUnit, table: pa.Table, metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """One file per partition value combination in the unit: ``COL=v/…/part-NNNNN.<suffix>``.

    The partition columns are left out of the files (their values are in the path, as Hive,
    Spark and pyarrow write them). Groups come in order of their first row; rows within a group
    keep input order. The unit id names every file, so names are unique across units and a
    retried unit rewrites the same files. Paths in the result are relative to the run's directory.
    """
    partition_by, form = output.spec.partition_by, output.spec.output_options
    keys = [table.column(name).cast(pa.string()).to_pylist() for name in partition_by]
    groups: dict[tuple[str | None, ...], list[int]] = {}
    for i, key in enumerate(zip(*keys, strict=True)):
        groups.setdefault(key, []).append(i)
    rest = table.drop_columns(list(partition_by))
    files = []
    for key, rows in groups.items():
        data = form.write(rest.take(pa.array(rows, pa.int64())), metadata)
        path = f"{directory(zip(partition_by, key, strict=True))}/{unit.id}{form.suffix}"
        write_atomic(fs, output.location.child(path), data)
        files.append({"path": path, "rows": len(rows), "bytes": len(data), "sha256": sha256(data)})
    return files


def _quarantine(fs: Any, location: Location, unit: WorkUnit, bad_lines: list[BadLine]) -> dict[str, Any] | None:
    """Keep a unit's bad lines byte for byte in OUTPUT/_rejected/, where each came from beside them.

    ``_rejected/part-NNNNN.jsonl`` holds the raw lines (fix them and feed the folder back in:
    listings skip the ``_reasons`` folder); ``_rejected/_reasons/part-NNNNN.jsonl`` gives each
    one's source file, line number and reason, in the same order. Deterministic names and
    atomic writes: a retried unit rewrites the same files.
    """
    if not bad_lines:
        return None
    data = b"".join(bad.raw + b"\n" for bad in bad_lines)
    reasons = "".join(json.dumps(bad_line_record(unit, bad), ensure_ascii=False) + "\n" for bad in bad_lines)
    path = location.child(f"{REJECTED}/{unit.id}.jsonl")
    write_atomic(fs, location.child(f"{REJECTED}/_reasons/{unit.id}.jsonl"), reasons.encode())
    write_atomic(fs, path, data)
    return {"path": f"{REJECTED}/{unit.id}.jsonl", "lines": len(bad_lines), "bytes": len(data), "sha256": sha256(data)}


def bad_line_record(unit: WorkUnit, bad: BadLine) -> dict[str, Any]:
    """Where a bad line came from and why, as the manifest and the quarantine's _reasons files show it."""
    return {"source": redact_url(unit.path), "line": bad.line, "reason": bad.reason}
