"""Delta Lake tables through delta-rs (the ``deltalake`` package): output commits and input snapshots.

Output: one commit per run adds every data file the workers wrote (``create_write_transaction``,
or ``create_table_with_add_actions`` on first use), carrying the run id twice: as an app
transaction ``batchnlp:<run id>`` (``DeltaTable.transaction_version`` reads it back; Delta keeps
them through checkpoints) and as commit metadata ``batchnlp.run_id`` (visible in ``DESCRIBE
HISTORY``). On S3, delta-rs 1.x commits with conditional writes (``If-None-Match`` on the next log
entry), so two writers can never both create one version: no DynamoDB lock, and never the
"unsafe rename" switch.

delta-rs does its own I/O (Rust's object_store), so the job's fsspec options are translated
into its options; like s3fs it reads the ``AWS_*`` environment. Its calls hold the GIL while
they wait on storage, so an S3 server running in the same Python process (a test's moto
thread) would never answer them.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchnlp.errors import InputError, JobFailed, OutputError
from batchnlp.io.formats.hive import Partitioning
from batchnlp.io.storage import InputFile, Location
from batchnlp.io.tables.base import (
    RUN_ID_PROPERTY,
    RUNS,
    DataFile,
    Rewrite,
    TableFiles,
    TableSink,
    compare_schemas,
)
from batchnlp.util.compat import strip_protocol

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

APP_ID = "batchnlp:{run_id}"
# Reader features whose tables cannot be read file by file: deleted rows live in separate
# vectors, physical column names differ from the schema's.
UNREADABLE_FEATURES = {"deletionVectors", "columnMapping", "v2Checkpoint"}


class DeltaSink(TableSink):
    """A Delta table at a local directory or an ``s3://`` prefix, created by the first run's commit."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.options = storage_options(location)

    @classmethod
    def for_output(cls, spec: JobSpec) -> DeltaSink:
        return cls(Location(spec.output, spec.storage_options))

    @classmethod
    def read_input(cls, spec: JobSpec) -> TableFiles:
        return read_snapshot(Location(spec.input, spec.storage_options), spec.table_version)

    def display(self) -> str:
        return f"Delta table {self.location.display()}"

    def root(self) -> Location:
        return self.location

    def table(self) -> Any:
        """The table at its latest version, or None when there is none yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.location.url, storage_options=self.options)
        except TableNotFoundError:
            return None
        except Exception as e:
            raise _failed(f"read {self.display()}", e) from e

    def committed(self, run_id: str) -> int | None:
        table = self.table()
        if table is None or table.transaction_version(APP_ID.format(run_id=run_id)) is None:
            return None
        # The version of that commit, from the history (log cleanup may have dropped it: then the latest).
        found = [entry["version"] for entry in table.history() if entry.get(RUN_ID_PROPERTY) == run_id]
        return found[0] if found else table.version()

    def check(self, schema: pa.Schema, partition_by: tuple[str, ...]) -> None:
        ours = _delta_schema(schema, self.display())
        table = self.table()
        if table is None:
            return  # created by the run's commit, with this schema
        compare_schemas(self.display(), pa.schema(table.schema().to_arrow()), pa.schema(ours.to_arrow()))
        existing = list(table.metadata().partition_columns)
        if existing != list(partition_by):
            wanted = " ".join(f"--partition-by {c}" for c in existing) if existing else "no --partition-by"
            raise OutputError(
                f"{self.display()} is partitioned by {', '.join(existing) or 'nothing'}, this job by "
                f"{', '.join(partition_by) or 'nothing'}: pass {wanted}"
            )

    def commit(
        self, run_id: str, staging: Location, files: list[DataFile], schema: pa.Schema, partition_by: tuple[str, ...]
    ) -> int:
        from deltalake import CommitProperties, Transaction
        from deltalake.transaction import AddAction, create_table_with_add_actions

        now = int(time.time() * 1000)
        # Paths relative to the table root, as stored (delta-rs URI-encodes them in the log).
        actions = [
            AddAction(f"{RUNS}/{run_id}/{f.path}", f.bytes, f.partition, now, True, json.dumps({"numRecords": f.rows}))
            for f in files
        ]
        properties = CommitProperties(
            custom_metadata={RUN_ID_PROPERTY: run_id}, app_transactions=[Transaction(APP_ID.format(run_id=run_id), 0)]
        )
        table = self.table()
        try:
            if table is None:
                create_table_with_add_actions(
                    self.location.url,
                    _delta_schema(schema, self.display()),
                    actions,
                    mode="append",
                    partition_by=list(partition_by) or None,
                    storage_options=self.options,
                    commit_properties=properties,
                )
            else:
                table.create_write_transaction(
                    actions, "append", table.schema(), list(partition_by) or None, commit_properties=properties
                )
        except Exception as e:
            raise _failed(f"commit run {run_id} to {self.display()}", e) from e
        version = self.committed(run_id)
        if version is None:
            raise JobFailed(f"the commit of run {run_id} to {self.display()} is not in its log; run again")
        return version


def read_snapshot(location: Location, version: int | None) -> TableFiles:
    """The data files of a Delta table at ``version`` (None: the latest), with each file's partition values."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    shown = f"Delta table {location.display()}"
    try:
        table = DeltaTable(location.url, version=version, storage_options=storage_options(location))
    except TableNotFoundError as e:
        raise InputError(f"{location.display()} is not a Delta table (no _delta_log/): {e}") from e
    except Exception as e:
        if version is not None and "version" in str(e).lower():
            raise InputError(f"{shown} has no version {version}: {e}") from e
        raise _failed(f"read {shown}", e, InputError) from e
    unreadable = UNREADABLE_FEATURES & set(table.protocol().reader_features or ())
    if unreadable:
        raise InputError(
            f"{shown} uses {', '.join(sorted(unreadable))}, which batchnlp cannot read file by file; "
            "export it to Parquet first (or rewrite it without these features)"
        )
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    fs, root = location.split()
    partition_columns = list(table.metadata().partition_columns)
    files, values = [], {}
    for action in actions:
        path = _log_path(fs, root.rstrip("/"), action["path"])
        files.append(InputFile(path, int(action["size_bytes"]), None))
        values[path] = {c: _text(action.get(f"partition.{c}")) for c in partition_columns}
    if not files:
        raise InputError(f"{shown} (version {table.version()}) holds no data files")
    files.sort(key=lambda f: f.path)
    partitioning = None
    if partition_columns:
        columns = pa.schema(table.schema().to_arrow())
        schema = pa.schema([columns.field(c) for c in partition_columns])
        partitioning = Partitioning("", schema)
    described = {"format": "delta", "table": location.display(), "version": table.version()}
    return TableFiles(location, files, partitioning, values if partitioning else {}, described)


def rewrites(location: Location, after: int, upto: int) -> list[Rewrite] | None:
    """The commits of versions ``after`` + 1 … ``upto`` that only rewrote files, oldest first, read from
    the log's JSON entries as Delta's streaming source reads them; None when one of those entries is
    gone (log cleanup), so which files are rewrites cannot be told."""
    fs, root = location.split()
    root = root.rstrip("/")
    found = []
    for version in range(after + 1, upto + 1):
        try:
            with fs.open(f"{root}/_delta_log/{version:020d}.json", "rb") as entry:
                actions = [json.loads(line) for line in entry.read().splitlines() if line.strip()]
        except FileNotFoundError:
            return None
        removed = {_log_path(fs, root, a["remove"]["path"]) for a in actions if _rewrite(a.get("remove"))}
        adds = [a["add"] for a in actions if _rewrite(a.get("add"))]
        added = {_log_path(fs, root, add["path"]): int(add["size"]) for add in adds}
        if removed or added:
            found.append(Rewrite(version, frozenset(removed), added))
    return found


def _rewrite(action: dict[str, Any] | None) -> bool:
    return action is not None and action.get("dataChange") is False


def _log_path(fs: Any, root: str, path: str) -> str:
    """A log entry's file path (relative to the table, or absolute) as an fsspec path: one rule for
    :func:`read_snapshot` and :func:`rewrites`, so that their paths compare."""
    return strip_protocol(fs, path) if "://" in path else f"{root}/{path}"


def storage_options(location: Location) -> dict[str, str]:
    """delta-rs options for an ``s3://`` location from the job's s3fs options and the environment."""
    if not location.url.startswith(("s3://", "s3a://")):
        return {}
    given = dict(location.storage_options)
    client = dict(given.get("client_kwargs") or {})
    found = {
        "AWS_ACCESS_KEY_ID": given.get("key"),
        "AWS_SECRET_ACCESS_KEY": given.get("secret"),
        "AWS_SESSION_TOKEN": given.get("token"),
        "AWS_REGION": client.get("region_name") or given.get("region"),
        "AWS_ENDPOINT_URL": given.get("endpoint_url")
        or client.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL"),
    }
    options = {key: str(value) for key, value in found.items() if value}
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"  # a local S3 (MinIO, moto): object_store refuses plain HTTP otherwise
    return options


def _delta_schema(schema: pa.Schema, table: str) -> Any:
    from deltalake import Schema

    try:
        return Schema.from_arrow(schema)
    except Exception as e:
        raise OutputError(f"{table} cannot hold this job's columns: {e}; cast or drop the column in the input") from e


def _text(value: Any) -> str | None:
    """A partition value as Hive and Delta write it: text, or None for null."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _failed(what: str, e: Exception, error: type[Exception] = JobFailed) -> Exception:
    """A delta-rs failure: storage refusals and outages read alike in its messages, so both say what to do."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if error is JobFailed:
        return JobFailed(
            f"could not {what}: {message}. Run the job again with the same --run-id: a run the table "
            "already holds is never committed twice"
        )
    return error(f"could not {what}: {message}")
