"""Apache Iceberg tables through pyiceberg: output commits and input snapshots.

The catalog is found the way pyiceberg finds it, ``load_catalog(name, **properties)``:
``.pyiceberg.yaml`` and ``PYICEBERG_CATALOG__<NAME>__<KEY>`` variables, named by ``--catalog``
(default ``default``) and overridden by ``--catalog-option KEY=VALUE``. With nothing configured,
an embedded SQL catalog on SQLite: ``catalog.db`` and ``warehouse/`` in the working directory,
as Spark keeps ``metastore_db`` and ``spark-warehouse`` there. Glue and REST catalogs are
options (``type=glue``, ``type=rest uri=...``).

File IO is fsspec's (s3fs) unless the catalog names another: pyarrow's own S3 client ignores
``AWS_ENDPOINT_URL``. Output: one ``Table.add_files`` append per run, which adds the files the
workers wrote where they lie and puts ``batchnlp.run_id`` in the snapshot summary; a run id
found in a snapshot's summary is not committed again (so expire snapshots no sooner than a
retried job could come back).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchnlp.errors import InputError, JobFailed, OutputError
from batchnlp.io.storage import InputFile, Location
from batchnlp.io.tables.base import RUN_ID_PROPERTY, DataFile, TableFiles, TableSink, compare_schemas
from batchnlp.util.compat import iceberg_schema, strip_protocol, table_location_resolver

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

DEFAULT_CATALOG = "default"
FSSPEC_IO = "pyiceberg.io.fsspec.FsspecFileIO"
COMMIT_ATTEMPTS = 5  # optimistic commits lost to concurrent writers of the same table


def load(name: str, options: dict[str, str]) -> Any:
    """The catalog ``name`` as pyiceberg configures it, ``options`` on top, or the embedded SQLite one."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.utils.config import Config

    configured = Config().get_catalog_config(name) or {}
    properties = dict(options)
    if not configured and "uri" not in properties and "type" not in properties:
        properties = {**embedded_catalog(), **properties}
    if "py-io-impl" not in configured and "py-io-impl" not in properties:
        properties["py-io-impl"] = FSSPEC_IO
    try:
        return load_catalog(name, **properties)
    except Exception as e:
        raise OutputError(
            f"cannot load Iceberg catalog {name!r}: {e}. Configure it in .pyiceberg.yaml or with "
            f"PYICEBERG_CATALOG__{name.upper()}__<KEY> variables, or pass --catalog-option KEY=VALUE "
            "(for example type=sql, uri=sqlite:///catalog.db, warehouse=s3://bucket/warehouse)"
        ) from e


def embedded_catalog() -> dict[str, str]:
    """A SQL catalog on SQLite in the working directory, its warehouse beside it."""
    here = Path.cwd()
    return {"type": "sql", "uri": f"sqlite:///{here / 'catalog.db'}", "warehouse": (here / "warehouse").as_uri()}


def split_identifier(identifier: str) -> tuple[str, str]:
    """``namespace.table`` (the namespace may itself hold dots) → (namespace, table); the spec checked the form."""
    namespace, _, table = identifier.rpartition(".")
    return namespace, table


class IcebergSink(TableSink):
    """An Iceberg table ``namespace.table`` in a pyiceberg catalog, created by the first run's commit."""

    version_kind = "snapshot"

    def __init__(self, identifier: str, catalog: tuple[str, dict[str, str]], storage_options: dict[str, Any]) -> None:
        self.identifier = identifier
        self.namespace, self.name = split_identifier(identifier)
        self.catalog_name, self.catalog_options = catalog
        self.storage_options = storage_options
        self._catalog: Any = None

    @classmethod
    def for_output(cls, spec: JobSpec) -> IcebergSink:
        return cls(spec.output, (spec.catalog, dict(spec.catalog_options)), dict(spec.storage_options))

    @classmethod
    def read_input(cls, spec: JobSpec) -> TableFiles:
        catalog = (spec.catalog, dict(spec.catalog_options))
        return read_snapshot(spec.input, catalog, spec.table_version, dict(spec.storage_options))

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            self._catalog = load(self.catalog_name, self.catalog_options)
        return self._catalog

    def display(self) -> str:
        return f"Iceberg table {self.identifier} (catalog {self.catalog_name})"

    def table(self) -> Any:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def root(self) -> Location:
        """The table's location; for a table still to be made, where its catalog will put it."""
        table = self.table()
        if table is not None:
            return Location(table.location(), self.storage_options)
        resolve = table_location_resolver(self.catalog)
        if resolve is None:
            raise OutputError(
                f"{self.display()} does not exist, and its catalog chooses new tables' locations itself; "
                "create the table first (with the job's output columns), then run the job"
            )
        self.catalog.create_namespace_if_not_exists(self.namespace)
        try:
            return Location(resolve(None, self.namespace, self.name), self.storage_options)
        except ValueError as e:
            raise OutputError(f"{self.display()}: {e}; pass --catalog-option warehouse=URL") from e

    def committed(self, run_id: str) -> int | None:
        table = self.table()
        if table is None:
            return None
        found = [s.snapshot_id for s in table.snapshots() if s.summary and s.summary.get(RUN_ID_PROPERTY) == run_id]
        return found[0] if found else None

    def check(self, schema: pa.Schema, partition_by: tuple[str, ...]) -> None:
        try:
            ours = iceberg_schema(schema).as_arrow()
        except Exception as e:
            raise OutputError(f"{self.display()} cannot hold this job's columns: {e}") from e
        table = self.table()
        if table is None:
            return
        compare_schemas(self.display(), table.schema().as_arrow(), ours)
        if table.spec().fields:
            raise OutputError(
                f"{self.display()} is partitioned ({table.spec()}); batchnlp appends to unpartitioned Iceberg "
                "tables (each run's files hold rows of every partition value)"
            )

    def commit(
        self, run_id: str, staging: Location, files: list[DataFile], schema: pa.Schema, partition_by: tuple[str, ...]
    ) -> int:
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

        paths = [staging.url.rstrip("/") + "/" + f.path for f in files]
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                table = self.table() or self.catalog.create_table(
                    self.identifier, schema=schema, location=self.root().url
                )
                table.add_files(paths, snapshot_properties={RUN_ID_PROPERTY: run_id})
                break
            except (CommitFailedException, TableAlreadyExistsError):
                if attempt == COMMIT_ATTEMPTS - 1 or self.committed(run_id) is not None:
                    break  # another writer kept winning, or this very commit landed and its answer was lost
            except Exception as e:
                raise JobFailed(
                    f"could not commit run {run_id} to {self.display()}: {e}. Run the job again with the same "
                    "--run-id: a run the table already holds is never committed twice"
                ) from e
        snapshot = self.committed(run_id)
        if snapshot is None:
            raise JobFailed(f"{self.display()} kept changing under the commit of run {run_id}; run again")
        return snapshot


def read_snapshot(
    identifier: str, catalog: tuple[str, dict[str, str]], snapshot_id: int | None, storage_options: dict[str, Any]
) -> TableFiles:
    """The data files of an Iceberg table at ``snapshot_id`` (None: the current snapshot)."""
    sink = IcebergSink(identifier, catalog, storage_options)
    table = sink.table()
    if table is None:
        raise InputError(f"{sink.display()} does not exist")
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot is None:
        what = f"no snapshot {snapshot_id}" if snapshot_id is not None else "no snapshots (it is empty)"
        raise InputError(f"{sink.display()} has {what}")
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    if any(task.delete_files for task in tasks):
        raise InputError(
            f"{sink.display()} has row-level deletes (merge-on-read) in snapshot {snapshot.snapshot_id}, which "
            "batchnlp cannot apply file by file; compact the table first (rewrite its data files)"
        )
    location = Location(table.location(), storage_options)
    fs = location.fs
    files = sorted(
        (InputFile(strip_protocol(fs, t.file.file_path), int(t.file.file_size_in_bytes), None) for t in tasks),
        key=lambda f: f.path,
    )
    if not files:
        raise InputError(f"{sink.display()} holds no data files in snapshot {snapshot.snapshot_id}")
    described = {"format": "iceberg", "table": identifier, "catalog": sink.catalog_name}
    return TableFiles(location, files, None, {}, {**described, "snapshot_id": snapshot.snapshot_id})
