"""The label cache: labels already computed, by key, in immutable Parquet files named by a create-only log.

A nightly run over a snapshot where most rows did not change looks its rows' keys up here, runs
the model on the misses only, writes the misses as new files and names them in the run's one
commit. The cache is a folder (local path, ``s3://`` or any fsspec URL) holding::

    _log/00000000000000000007.json        one per committed version, written create-only
    data/<namespace>/<name>.parquet        immutable data files, sorted by key

- **Entries.** A key is 16 bytes (blake2b-128 of a task's settings namespace and the text), so
  keys are spread evenly; each entry is ``key``, ``value`` (the label, a struct usually),
  ``tokens`` and ``added_at`` (epoch seconds, kept through compactions so ages survive).
- **Versions.** Log version N holds the *full* list of live files (a reader reads one log file),
  the namespaces' descriptions, the format, the run id and when it was committed. The latest
  version is the highest number listed under ``_log/``. A commit writes version latest+1 with
  :func:`batchnlp.io.storage.create_only` (S3 ``If-None-Match: *``, a local hard link); when
  another writer took that number first it reads the new latest version and tries again on top of
  it, so two nights that commit at once both land, and a compaction's removals are never undone.
- **Lookups** skip whole files whose key range holds none of the keys and, inside a file, every
  row group whose min/max statistics hold none: a bucket of keys in a narrow range reads a few
  row groups, not the cache. A version is never changed, so a reader of an older version is not
  disturbed by later commits.
- **Deletion.** A compaction rewrites files and removes the old ones from the next version; it
  records each removal with its time, and deletes a removed file only once it has been removed
  for ``retain_hours`` (a night that read an older version may still be looking it up). Nothing
  the log never named is ever deleted: files of runs that never committed are reported by
  :meth:`LabelCache.inspect` and left alone.

See docs/label-cache.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import random
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchnlp.errors import BatchnlpError, CacheError
from batchnlp.io.layout import MANIFEST, PROGRESS, SUCCESS
from batchnlp.io.storage import (
    Location,
    check_output,
    create_only,
    service_error,
    stays_inside,
    storage_errors,
    write_atomic,
)
from batchnlp.ledger.lease_store import LOST_RACE_CODES

KEY_TYPE = pa.binary(16)
FORMAT = 1  # the on-disk format this code writes and the newest it reads

LOG = "_log"
DATA = "data"
LOG_NAME = re.compile(r"(\d{20})\.json")
NAMESPACE = re.compile(r"[0-9a-f]{1,128}")
COLUMNS = ("key", "value", "tokens")  # what a caller writes and a lookup returns
ROW_GROUP_ROWS = 65_536  # small enough for range lookups to skip most of a file, large enough to compress
COMPACT_FILE_ROWS = 1_048_576  # entries per file a compaction writes (about 16 row groups)
COMMIT_ATTEMPTS = 64  # lost races a commit rides out before it gives up
MODEL_KEYS = ("model", "model_digest")  # the description keys ``compact(model=...)`` matches
FOOTER_KEY = b"batchnlp.label_cache"  # the data files' own Parquet key-value metadata
DAY = 86_400.0
HOUR = 3_600.0


# --- the records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFile:
    """One immutable Parquet data file of the cache, as the log names it.

    ``path`` is relative to the cache root (``data/<namespace>/<name>.parquet``); ``min_key`` and
    ``max_key`` are the hex of its smallest and largest key (lookups skip files outside a key
    range); ``min_added_at`` and ``max_added_at`` (epoch seconds) give entry ages without reading
    rows; ``created_at`` is when the file was written.
    """

    path: str
    namespace: str
    rows: int
    bytes: int
    min_key: str
    max_key: str
    created_at: float
    min_added_at: int
    max_added_at: int

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_record` reads it back."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CacheFile:
        """The file a log record names; ValueError when the record is malformed or its path leads
        anywhere but ``data/<namespace>/`` of the cache."""
        made = cls(
            path=str(record["path"]),
            namespace=str(record["namespace"]),
            rows=int(record["rows"]),
            bytes=int(record["bytes"]),
            min_key=str(record["min_key"]),
            max_key=str(record["max_key"]),
            created_at=float(record["created_at"]),
            min_added_at=int(record["min_added_at"]),
            max_added_at=int(record["max_added_at"]),
        )
        check_data_path(made.path, made.namespace)
        return made

    @property
    def key_range(self) -> tuple[bytes, bytes]:
        return bytes.fromhex(self.min_key), bytes.fromhex(self.max_key)


@dataclass(frozen=True)
class CacheVersion:
    """One committed state of the cache: the live files and the namespaces' descriptions.

    Small and picklable (it travels into Dask tasks) and JSON-able (a sharded run's stored plan
    keeps it): :meth:`to_record` and :meth:`from_record`. Version 0 is an empty or not yet
    existing cache. A namespace's description is the caller's JSON dict (task kind, ``model``,
    ``model_digest``, settings); ``inspect`` shows it and ``compact(model=...)`` matches on it.
    """

    version: int
    files: tuple[CacheFile, ...] = ()
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_record` reads it back."""
        return {
            "format": FORMAT,
            "version": self.version,
            "files": [file.to_record() for file in self.files],
            "namespaces": {name: dict(description) for name, description in self.namespaces.items()},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str = "the record") -> CacheVersion:
        """The version ``record`` holds; CacheError naming ``source`` when it is of a newer format
        or malformed."""
        check_format(record, source)
        try:
            files = tuple(CacheFile.from_record(file) for file in record["files"])
            namespaces = {str(name): dict(description) for name, description in record["namespaces"].items()}
            return cls(version=int(record["version"]), files=files, namespaces=namespaces)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CacheError(
                f"{source} is not a label cache version batchnlp wrote ({type(e).__name__}: {e}): "
                "restore it, or point at another cache"
            ) from e

    def of(self, namespace: str) -> list[CacheFile]:
        """The live files of ``namespace``."""
        return [file for file in self.files if file.namespace == namespace]

    @property
    def paths(self) -> set[str]:
        return {file.path for file in self.files}


@dataclass(frozen=True)
class Removal:
    """A file a compaction removed from the live list, and when (epoch seconds): deleted after the retention."""

    path: str
    removed_at: float


@dataclass(frozen=True)
class LogEntry:
    """One log file: the version it commits, who committed it and how, and the removals still kept on disk."""

    version: CacheVersion
    run_id: str
    operation: str  # "write" (a run's new files), "compact" or "vacuum"
    committed_at: float
    added: tuple[str, ...]  # paths this commit made live
    removed: tuple[Removal, ...]  # every removed file not deleted yet, carried from version to version

    def to_json(self) -> bytes:
        record = {
            **self.version.to_record(),
            "run_id": self.run_id,
            "operation": self.operation,
            "committed_at": self.committed_at,
            "added": list(self.added),
            "removed": [asdict(removal) for removal in self.removed],
        }
        return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> LogEntry:
        """The entry in ``data``; CacheError naming ``source`` when it is no JSON, of a newer format or malformed."""
        try:
            record = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CacheError(
                f"{source} is not valid JSON ({e}): the cache's log is damaged or was written by another tool; "
                "restore the file from a backup, or point at another cache"
            ) from e
        if not isinstance(record, dict):
            raise CacheError(f"{source} holds no log record: restore it, or point at another cache")
        version = CacheVersion.from_record(record, source)
        try:
            removed = tuple(Removal(str(r["path"]), float(r["removed_at"])) for r in record["removed"])
            for removal in removed:
                check_data_path(removal.path)
            return cls(
                version=version,
                run_id=str(record["run_id"]),
                operation=str(record["operation"]),
                committed_at=float(record["committed_at"]),
                added=tuple(str(path) for path in record["added"]),
                removed=removed,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(
                f"{source} is not a log record batchnlp wrote ({type(e).__name__}: {e}): "
                "restore it, or point at another cache"
            ) from e


@dataclass(frozen=True)
class Hits:
    """What a lookup found, and what finding it cost (the run reports it).

    ``table`` has one row per key found: ``key``, ``value``, ``tokens``, sorted by key.
    ``bytes_read`` counts the bytes read from storage (footers and row groups).
    """

    table: pa.Table
    files_opened: int
    row_groups_read: int
    bytes_read: int


def check_format(record: Mapping[str, Any], source: str) -> None:
    """CacheError naming ``source`` unless ``record`` is of a format this batchnlp reads."""
    found = record.get("format")
    if not isinstance(found, int) or found < 1:
        raise CacheError(f"{source} names no label cache format: restore it, or point at another cache")
    if found > FORMAT:
        raise CacheError(
            f"{source} was written by a newer batchnlp (label cache format {found}; this one reads format "
            f"{FORMAT} and older): upgrade batchnlp to use this cache"
        )


def check_data_path(path: str, namespace: str | None = None) -> None:
    """ValueError unless ``path`` is a data file's path inside the cache (``data/<namespace>/<name>.parquet``)."""
    parts = path.split("/")
    if not stays_inside(path) or len(parts) != 3 or parts[0] != DATA or not NAMESPACE.fullmatch(parts[1]):
        raise ValueError(f"{path!r} is no data file path of a label cache")
    if namespace is not None and parts[1] != namespace:
        raise ValueError(f"{path!r} is not in namespace {namespace!r}")


def check_namespace(namespace: str) -> None:
    """ValueError unless ``namespace`` is a lower-case hex string (it names a folder)."""
    if not NAMESPACE.fullmatch(namespace):
        raise ValueError(f"a namespace is a lower-case hex string of 1 to 128 digits, got {namespace!r}")


# --- the store ------------------------------------------------------------------------------


class LabelCache:
    """The label cache at ``url`` (a local path, ``s3://`` or any fsspec URL); see the module's docstring.

    Picklable: the object holds only its location, and each process builds its own filesystem.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.location = Location(url.rstrip("/") or url, dict(storage_options or {}))
        self._root_checked = False

    def __repr__(self) -> str:
        return f"LabelCache({self.location.display()!r})"

    # --- reading ----------------------------------------------------------------------------

    def current(self) -> CacheVersion:
        """The latest committed version (version 0 when nothing was committed yet).

        CacheError when the location holds something other than a cache, or its latest log file
        is damaged or of a newer format.
        """
        return self.latest_entry().version

    def latest_entry(self) -> LogEntry:
        """The latest log entry; an empty version 0 (run id "") when nothing was committed."""
        self.check_root()
        versions = self.versions()
        if not versions:
            return LogEntry(CacheVersion(0), run_id="", operation="", committed_at=0.0, added=(), removed=())
        return self.entry(versions[-1])

    def versions(self) -> list[int]:
        """The committed version numbers, listed from ``_log/`` now (no cached listing), in order."""
        fs, log_dir = self.fs, self.path(LOG)
        with storage_errors("list", self.display(LOG), CacheError):
            fs.invalidate_cache(log_dir)
            try:
                names = fs.ls(log_dir, detail=False)
            except FileNotFoundError:
                return []
        found = (LOG_NAME.fullmatch(posixpath.basename(name.rstrip("/"))) for name in names)
        return sorted(int(match[1]) for match in found if match)

    def entry(self, version: int) -> LogEntry:
        """Log entry ``version``, checked: CacheError naming the file when it is damaged or newer."""
        name = log_name(version)
        source = self.display(name)
        with storage_errors("read", source, CacheError):
            try:
                data = self.fs.cat_file(self.path(name))
            except FileNotFoundError as e:
                raise CacheError(f"{source} does not exist: the cache has no version {version}") from e
        entry = LogEntry.from_json(data, source)
        if entry.version.version != version:
            raise CacheError(f"{source} says it is version {entry.version.version}: restore it, or point elsewhere")
        return entry

    def lookup(self, version: CacheVersion, namespace: str, keys: pa.Array, value_type: pa.DataType) -> Hits:
        """The entries of ``namespace`` in ``version`` whose key is in ``keys`` (hits only).

        ``keys`` are ``binary(16)``, normally sorted and unique (they are sorted and deduplicated
        here otherwise). Only files of ``namespace`` whose key range holds one of the keys are
        opened, and in each only the row groups whose min/max statistics hold one are read. A key
        found in several files (two nights that wrote it at once) is returned once: the values are
        equal by construction. A stored ``value`` whose type is not ``value_type`` (another task's
        entries under a colliding namespace) is a CacheError, never a cast.
        """
        keys = sorted_keys(keys)
        wanted = key_view(keys)
        found: list[pa.Table] = []
        opened = groups = read = 0
        for file in version.of(namespace):
            if not any_between(wanted, *file.key_range):
                continue
            table, file_groups, file_bytes = self.read_keys(file, keys, wanted, value_type)
            opened, groups, read = opened + 1, groups + file_groups, read + file_bytes
            if table.num_rows:
                found.append(table)
        hits = first_of_each_key(concat(found, value_type).sort_by([("key", "ascending")]))
        return Hits(table=hits.select(list(COLUMNS)), files_opened=opened, row_groups_read=groups, bytes_read=read)

    def read_keys(
        self, file: CacheFile, keys: pa.Array, wanted: np.ndarray, value_type: pa.DataType
    ) -> tuple[pa.Table, int, int]:
        """The rows of ``file`` whose key is in ``keys``, how many row groups were read, and the bytes read."""
        with self.open_data(file) as (parquet, counter):
            check_value_type(parquet, file, value_type, self.display(file.path))
            chosen = row_groups_holding(parquet.metadata, wanted)
            table = parquet.read_row_groups(chosen, columns=[*COLUMNS, "added_at"]) if chosen else None
            if table is not None:
                table = table.filter(pc.is_in(table["key"], value_set=keys)).replace_schema_metadata(None)
            return (table if table is not None else empty_entries(value_type)), len(chosen), counter.count

    def open_data(self, file: CacheFile) -> OpenParquet:
        """``file`` open as a ParquetFile whose reads are counted; CacheError when it is missing."""
        return OpenParquet(self, file)

    # --- writing ----------------------------------------------------------------------------

    def write(self, namespace: str, entries: pa.Table, run_id: str, added_at: int | None = None) -> CacheFile:
        """Write ``entries`` (``key``, ``value``, ``tokens``; one row per key) as one data file of ``namespace``.

        The file is sorted by key, in row groups of :data:`ROW_GROUP_ROWS`, with an ``added_at``
        column (epoch seconds: ``added_at``, default now; pass the run's start time and a rerun
        writes the very same bytes). Its name is a hash of the namespace, the run id and the sorted
        keys, so a rerun of the same Dask task rewrites the same file harmlessly. It is not live
        until :meth:`commit` names it. ValueError when ``entries`` is empty or malformed.
        """
        check_namespace(namespace)
        table = checked_entries(entries)
        stamp = int(time.time()) if added_at is None else int(added_at)
        table = table.append_column("added_at", pa.array(np.full(table.num_rows, stamp, dtype=np.int64)))
        self.check_root()
        check_output(self.location)
        return self.write_sorted(namespace, table, run_id)

    def write_sorted(self, namespace: str, table: pa.Table, run_id: str) -> CacheFile:
        """Write ``table`` (the entry columns and ``added_at``, sorted by unique key) as one data file."""
        digest = hashlib.blake2b(digest_size=16)
        for part in (namespace.encode(), b"\0", run_id.encode(), b"\0"):
            digest.update(part)
        for chunk in table["key"].chunks:
            digest.update(key_view(chunk).tobytes())
        path = f"{DATA}/{namespace}/{digest.hexdigest()}.parquet"
        data = parquet_bytes(table, namespace)
        write_atomic(self.fs, self.path(path), data)
        added = table["added_at"]
        return CacheFile(
            path=path,
            namespace=namespace,
            rows=table.num_rows,
            bytes=len(data),
            min_key=table["key"][0].as_py().hex(),
            max_key=table["key"][-1].as_py().hex(),
            created_at=time.time(),
            min_added_at=int(pc.min(added).as_py()),
            max_added_at=int(pc.max(added).as_py()),
        )

    def commit(
        self, base: CacheVersion, files: Sequence[CacheFile], namespaces: Mapping[str, Mapping[str, Any]], run_id: str
    ) -> CacheVersion:
        """Make ``files`` live: write the next log version, create-only, and return it.

        The new version is the *latest* version's files plus ``files`` (never ``base.files``: a
        compaction committed since ``base`` would be undone), with ``namespaces``' descriptions
        merged over the latest's. When another writer commits that version number first, the commit
        rebases on the new latest version and tries again. Idempotent: when a version after
        ``base`` (or the latest) was committed by ``run_id`` with these files, it is returned and
        nothing is written (a retried commit job); a file the latest version already names, live or
        removed by a compaction, is never added again, and when that is every file nothing is
        committed and the latest version is returned. An empty ``files`` commits nothing and returns
        the current version. Every file's namespace needs a description, here or in the cache.
        """
        if not files:
            return self.current()
        for file in files:
            check_data_path(file.path, file.namespace)
        self.check_root()
        paths = {file.path for file in files}
        self.check_written(files)
        checked = max(base.version, 0)
        attempt = 0
        while True:
            latest = self.latest_entry()
            done = self.committed_by(run_id, paths, checked, latest)
            if done is not None:
                return done
            checked = latest.version.version
            entry = with_files(latest, files, namespaces, run_id)
            if entry is None:  # the log knows every file already: committed before, perhaps compacted since
                return latest.version
            if self.create_log(entry):
                return entry.version
            attempt = lost_race(attempt, self.display(log_name(entry.version.version)))

    def committed_by(self, run_id: str, paths: set[str], after: int, latest: LogEntry) -> CacheVersion | None:
        """The version, after ``after`` up to ``latest`` (or ``latest`` itself), that ``run_id`` committed
        making every one of ``paths`` live; None when there is none."""
        first = min(after + 1, latest.version.version)
        for number in range(max(first, 1), latest.version.version + 1):
            entry = latest if number == latest.version.version else self.entry(number)
            if entry.run_id == run_id and paths <= set(entry.added):
                return entry.version
        return None

    def check_written(self, files: Sequence[CacheFile]) -> None:
        """CacheError unless every one of ``files`` exists (one listing per namespace folder)."""
        by_folder: dict[str, set[str]] = {}
        for file in files:
            by_folder.setdefault(posixpath.dirname(file.path), set()).add(file.path)
        for folder, wanted in by_folder.items():
            present = {self.relative(path) for path in self.list_files(folder)}
            if missing := sorted(wanted - present):
                raise CacheError(
                    f"cannot commit {self.display(missing[0])} ({len(missing)} file(s) missing): "
                    "it was never written, or was deleted; write the entries again"
                )

    def create_log(self, entry: LogEntry) -> bool:
        """Write ``entry``'s log file create-only; False when another writer took its version number."""
        path = self.path(log_name(entry.version.version))
        try:
            return create_only(self.fs, path, entry.to_json())
        except BatchnlpError as e:  # S3 answers 409 to a conditional write racing another
            status, code, _, _ = service_error(e)
            if code in LOST_RACE_CODES or status in (409, 412):
                return False
            raise

    # --- maintenance ------------------------------------------------------------------------

    def inspect(self) -> dict[str, Any]:
        """What the cache holds, from the latest log entry and one listing of ``data/``.

        Entries and bytes in all and per namespace (with its description), entry ages (seconds,
        from the files' ``added_at`` bounds: no row is read), files removed by a compaction and
        awaiting deletion, and unreferenced files under ``data/`` (written by runs that never
        committed: reported, never deleted). CacheError when nothing is at the location.
        """
        self.check_exists()
        entry = self.latest_entry()
        version, now = entry.version, time.time()
        live, removed = version.paths, {removal.path for removal in entry.removed}
        listed = self.list_files(DATA, sizes=True)
        present = {self.relative(path): size for path, size in listed.items()}
        awaiting = {path: size for path, size in present.items() if path in removed and path not in live}
        unreferenced = {path: size for path, size in present.items() if path not in live and path not in removed}
        namespaces = {
            name: {"description": description, **figures(version.of(name), now)}
            for name, description in sorted(version.namespaces.items())
        }
        return {
            "url": self.location.display(),
            "version": version.version,
            "format": FORMAT,
            "run_id": entry.run_id,
            "committed_at": entry.committed_at or None,
            **figures(list(version.files), now),
            "namespaces": namespaces,
            "awaiting_deletion": {"files": len(awaiting), "bytes": sum(awaiting.values())},
            "unreferenced": {
                "files": len(unreferenced),
                "bytes": sum(unreferenced.values()),
                "paths": sorted(unreferenced)[:5],
            },
        }

    def compact(
        self, older_than_days: float | None = None, model: str | None = None, retain_hours: float = 24.0
    ) -> dict[str, Any]:
        """Rewrite each namespace's live files into fewer, larger sorted files, and delete what retention allows.

        Entries added more than ``older_than_days`` ago are dropped, and so is every namespace
        whose description's ``model`` or ``model_digest`` equals ``model``. A namespace with nothing
        to drop, in one file or in files all at least half of :data:`COMPACT_FILE_ROWS` (what a
        compaction writes), is left as it is. The new version is committed create-only,
        rebasing on commits that landed meanwhile (a night's new files stay live); a compaction
        that committed meanwhile is a CacheError (run compact again). Only files the log recorded
        as removed at least ``retain_hours`` ago, and not live, are deleted: a night that read an
        older version may still be looking the others up. Returns what it did.
        """
        if retain_hours < 0 or (older_than_days is not None and older_than_days < 0):
            raise ValueError("older_than_days and retain_hours must not be negative")
        self.check_exists()
        now = time.time()
        planned = self.latest_entry()
        cutoff = None if older_than_days is None else now - older_than_days * DAY
        job = Compaction(self, planned, cutoff, model, f"compact-{uuid.uuid4().hex[:16]}")
        job.rewrite()
        deleted = self.vacuum(planned, now - retain_hours * HOUR)
        version = job.commit(deleted, now) if job.removed or deleted else planned.version
        return job.summary(version, deleted)

    def vacuum(self, entry: LogEntry, removed_before: float) -> dict[str, int]:
        """Delete the files ``entry`` records as removed before ``removed_before`` and not live; path → bytes."""
        live = entry.version.paths
        due = [r.path for r in entry.removed if r.removed_at <= removed_before and r.path not in live]
        if not due:
            return {}
        sizes = self.list_files(DATA, sizes=True)
        deleted = {}
        for path in due:
            check_data_path(path)  # read back from the log: never anything outside data/
            full = self.path(path)
            # FileNotFoundError: deleted already, by a compaction that did not commit
            with storage_errors("delete", self.display(path), CacheError), suppress(FileNotFoundError):
                self.fs.rm_file(full)
            deleted[path] = sizes.get(full, 0)
        return deleted

    # --- the location -----------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        return self.location.fs

    @property
    def root(self) -> str:
        return self.location.path.rstrip("/")

    def path(self, name: str) -> str:
        """The fsspec path of ``name``, relative to the cache root."""
        return f"{self.root}/{name}"

    def relative(self, path: str) -> str:
        """``path`` (an fsspec path under the root) relative to the root."""
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path

    def display(self, name: str | None = None) -> str:
        """A URL for messages: the root, or ``name`` under it."""
        return self.location.display(self.path(name) if name else None)

    def list_files(self, folder: str, sizes: bool = False) -> dict[str, int]:
        """Every file under ``folder`` (relative to the root), listed now: fsspec path → size."""
        fs, full = self.fs, self.path(folder)
        with storage_errors("list", self.display(folder), CacheError):
            fs.invalidate_cache(full)
            try:
                found = fs.find(full, detail=True)
            except FileNotFoundError:
                return {}
        return {path: int(info.get("size") or 0) for path, info in found.items() if info.get("type") != "directory"}

    def check_exists(self) -> None:
        """CacheError when nothing at all is at the location (a typo in a maintenance command's URI)."""
        if self.top_level() is None:
            raise CacheError(f"there is no label cache at {self.display()} (nothing is there): check the URI")

    def check_root(self) -> None:
        """CacheError when the location holds anything a label cache never has (once per object)."""
        if self._root_checked:
            return
        names = self.top_level() or []
        if foreign := sorted(set(names) - {LOG, DATA}):
            raise CacheError(not_a_cache(self.display(), foreign))
        self._root_checked = True

    def top_level(self) -> list[str] | None:
        """The names directly under the root, or None when nothing is there."""
        fs, root = self.fs, self.root
        with storage_errors("list", self.display(), CacheError):
            fs.invalidate_cache(root)
            try:
                entries = fs.ls(root, detail=True)
            except FileNotFoundError:
                return None
        names = [
            posixpath.basename(entry["name"].rstrip("/"))
            for entry in entries
            if entry["name"].rstrip("/") != root or entry.get("type") != "directory"  # the URI itself, a file: foreign
        ]
        return names or None


# --- compaction -----------------------------------------------------------------------------


class Compaction:
    """One compaction: what it rewrites and removes (planned from one log entry), its commit, its summary."""

    def __init__(
        self, cache: LabelCache, planned: LogEntry, cutoff: float | None, model: str | None, run_id: str
    ) -> None:
        self.cache, self.planned, self.cutoff, self.run_id = cache, planned, cutoff, run_id
        version = planned.version
        self.dropped = sorted(n for n, d in version.namespaces.items() if model is not None and uses_model(d, model))
        self.removed: list[CacheFile] = []
        self.written: list[CacheFile] = []
        self.expired = self.duplicates = 0
        self.value_type: pa.DataType | None = None  # of the namespace being merged

    def rewrite(self) -> None:
        """Plan and write every namespace's new files (nothing is live until :meth:`commit`)."""
        version = self.planned.version
        for namespace in sorted({file.namespace for file in version.files}):
            files = version.of(namespace)
            if namespace in self.dropped:
                self.removed += files
                continue
            gone = [f for f in files if self.cutoff is not None and f.max_added_at < self.cutoff]
            kept = [f for f in files if f not in gone]
            self.expired += sum(f.rows for f in gone)
            self.removed += gone
            old = any(self.cutoff is not None and f.min_added_at < self.cutoff for f in kept)
            small = [f for f in kept if f.rows < COMPACT_FILE_ROWS // 2]  # compacted files are at least half full
            if old or (len(kept) > 1 and small):
                self.removed += kept
                self.written += self.merge(namespace, kept)

    def merge(self, namespace: str, files: list[CacheFile]) -> list[CacheFile]:
        """``files`` rewritten as files of up to :data:`COMPACT_FILE_ROWS` entries, one per slice of the key space.

        Keys are hashes, spread evenly, so equal slices of the key space hold about equal numbers
        of entries. A file of one row group (a night's increment, usually) meets every slice: it
        is read once, whole, and its entries are dealt to the slices in memory. A larger file is
        read slice by slice, by the row groups whose key range meets the slice. Memory: the small
        files' entries plus one slice.
        """
        self.value_type = None
        slices = key_slices(max(1, math.ceil(sum(file.rows for file in files) / COMPACT_FILE_ROWS)))
        small = [file for file in files if file.rows <= ROW_GROUP_ROWS]
        large = [file for file in files if file.rows > ROW_GROUP_ROWS]
        dealt = deal(self.read_whole(small), slices)
        written = []
        for (low, high), ready in zip(slices, dealt, strict=True):
            table = self.keep(pa.concat_tables([ready, *self.read_slice(large, low, high)]))
            if table.num_rows:
                written.append(self.cache.write_sorted(namespace, table, self.run_id))
        return written

    def keep(self, table: pa.Table) -> pa.Table:
        """``table`` without expired entries and with one entry per key (the newest), sorted by key."""
        read = table.num_rows
        if self.cutoff is not None:
            table = table.filter(pc.greater_equal(table["added_at"], math.ceil(self.cutoff)))
        self.expired += read - table.num_rows
        young = table.num_rows  # a key two nights wrote at once: its newest entry stays
        table = first_of_each_key(table.sort_by([("key", "ascending"), ("added_at", "descending")]))
        self.duplicates += young - table.num_rows
        return table

    def read_whole(self, files: list[CacheFile]) -> pa.Table:
        """Every entry of ``files``, all columns."""
        parts = []
        for file in files:
            with self.opened(file) as parquet:
                parts.append(parquet.read(columns=[*COLUMNS, "added_at"]).replace_schema_metadata(None))
        return pa.concat_tables(parts) if parts else empty_entries(self.value_type or pa.null())

    def read_slice(self, files: list[CacheFile], low: bytes, high: bytes | None) -> list[pa.Table]:
        """The entries of ``files`` with ``low <= key < high`` (``high`` None: no upper bound), all columns."""
        parts = []
        for file in files:
            min_key, max_key = file.key_range
            if max_key < low or (high is not None and min_key >= high):
                continue
            with self.opened(file) as parquet:
                chosen = row_groups_in_range(parquet.metadata, low, high)
                table = parquet.read_row_groups(chosen, columns=[*COLUMNS, "added_at"]) if chosen else None
            if table is not None:
                parts.append(in_slice(table.replace_schema_metadata(None), low, high))
        return parts

    @contextmanager
    def opened(self, file: CacheFile) -> Iterator[pq.ParquetFile]:
        """``file`` open for reading, its values checked to be of the namespace's one type."""
        with self.cache.open_data(file) as (parquet, _):
            self.value_type = self.value_type or parquet.schema_arrow.field("value").type
            check_value_type(parquet, file, self.value_type, self.cache.display(file.path))
            yield parquet

    def commit(self, deleted: Mapping[str, int], now: float) -> CacheVersion:
        """Commit the compaction on the latest version, rebasing on nights' commits; CacheError when
        another compaction removed any of the files this one rewrote."""
        removed = {file.path for file in self.removed}
        latest, attempt = self.planned, 0
        while True:
            if latest is not self.planned and (lost := sorted(removed - latest.version.paths)):
                raise CacheError(
                    f"another compaction committed version {latest.version.version} of {self.cache.display()} "
                    f"while this one ran ({self.cache.display(lost[0])} is no longer live): run compact again; "
                    "the files this one wrote are left unreferenced"
                )
            entry = self.entry(latest, removed, deleted, now)
            if self.cache.create_log(entry):
                return entry.version
            attempt = lost_race(attempt, self.cache.display(log_name(entry.version.version)))
            latest = self.cache.latest_entry()

    def entry(self, latest: LogEntry, removed: set[str], deleted: Mapping[str, int], now: float) -> LogEntry:
        """The log entry that applies this compaction to ``latest``."""
        dropped = set(self.dropped)
        going = [f for f in latest.version.files if f.path in removed or f.namespace in dropped]
        going_paths = {f.path for f in going}
        files = tuple(f for f in latest.version.files if f.path not in going_paths) + tuple(self.written)
        live = {f.path for f in files}
        namespaces = {n: d for n, d in latest.version.namespaces.items() if n not in dropped}
        kept = tuple(r for r in latest.removed if r.path not in deleted and r.path not in live)
        added = tuple(Removal(path, now) for path in sorted(going_paths - live))
        return LogEntry(
            version=CacheVersion(latest.version.version + 1, files, namespaces),
            run_id=self.run_id,
            operation="compact" if self.removed else "vacuum",
            committed_at=time.time(),
            added=tuple(f.path for f in self.written),
            removed=kept + added,
        )

    def summary(self, version: CacheVersion, deleted: Mapping[str, int]) -> dict[str, Any]:
        before = self.planned.version
        return {
            "url": self.cache.location.display(),
            "version_before": before.version,
            "version": version.version,
            "committed": version.version != before.version,
            "files_before": len(before.files),
            "files": len(version.files),
            "entries_before": sum(f.rows for f in before.files),
            "entries": sum(f.rows for f in version.files),
            "expired_entries": self.expired,
            "dropped_namespaces": self.dropped,
            "dropped_entries": sum(f.rows for f in before.files if f.namespace in self.dropped),
            "written_files": len(self.written),
            "removed_files": len(self.removed),
            "duplicate_entries": self.duplicates,
            "deleted_files": len(deleted),
            "deleted_bytes": sum(deleted.values()),
        }


# --- helpers --------------------------------------------------------------------------------


class OpenParquet:
    """``with OpenParquet(cache, file) as (parquet, counter)``: a data file open for reading, reads counted."""

    def __init__(self, cache: LabelCache, file: CacheFile) -> None:
        self.cache, self.file = cache, file
        self.source = cache.display(file.path)
        self.handle: Any = None

    def __enter__(self) -> tuple[pq.ParquetFile, CountingReader]:
        fs, path = self.cache.fs, self.cache.path(self.file.path)
        remote = {} if self.cache.location.is_local else {"cache_type": "none", "size": self.file.bytes}
        with storage_errors("read", self.source, CacheError):
            try:
                self.handle = fs.open(path, "rb", **remote)
            except FileNotFoundError as e:
                raise CacheError(
                    f"{self.source}, live in the cache's log, is missing: it was deleted by hand, or by a "
                    "compaction whose --retain-hours was shorter than this run; run again to recompute it"
                ) from e
            counter = CountingReader(self.handle)
            try:
                return pq.ParquetFile(counter, pre_buffer=True), counter
            except pa.ArrowInvalid as e:
                self.handle.close()
                raise CacheError(f"{self.source} is not a readable Parquet file ({e}): the cache is damaged") from e

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


class CountingReader:
    """A read-only file object that counts the bytes read through it (the lookup's cost)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.count += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()

    @property
    def closed(self) -> bool:
        return bool(self.handle.closed)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


def log_name(version: int) -> str:
    """The log file of ``version``: ``_log/<20 digits>.json``, so names sort as numbers do."""
    return f"{LOG}/{version:020d}.json"


def not_a_cache(where: str, foreign: list[str]) -> str:
    """The refusal of a location that holds ``foreign`` names."""
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    output = {SUCCESS, MANIFEST, PROGRESS} & set(foreign)
    what = " (it looks like a batchnlp run's output)" if output else ""
    return (
        f"{where} is not a label cache{what}: it holds {shown}, and a label cache holds only _log/ and data/. "
        "Give the cache a location of its own (a new or empty folder or prefix); nothing was written"
    )


def lost_race(attempt: int, url: str) -> int:
    """After a commit lost the race for a version number: wait a little (jittered), count the attempt."""
    attempt += 1
    if attempt >= COMMIT_ATTEMPTS:
        raise CacheError(
            f"{url}: {COMMIT_ATTEMPTS} commits in a row lost the race to other writers of the cache; "
            "too many runs commit to it at once: run again"
        )
    time.sleep(random.uniform(0, min(2.0, 0.02 * 2**attempt)))
    return attempt


def with_files(
    latest: LogEntry, files: Sequence[CacheFile], namespaces: Mapping[str, Mapping[str, Any]], run_id: str
) -> LogEntry | None:
    """The log entry that adds ``files`` to ``latest``: its files, then those it does not know yet
    (neither live nor removed: a removed file must not come back). None when it knows them all."""
    merged = {**latest.version.namespaces, **{name: dict(d) for name, d in namespaces.items()}}
    for name in {file.namespace for file in files} - set(merged):
        raise ValueError(f"namespace {name} has no description: pass it in namespaces")
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as e:
        raise ValueError(f"namespace descriptions must be JSON: {e}") from e
    known = latest.version.paths | {removal.path for removal in latest.removed}
    new = tuple({file.path: file for file in files if file.path not in known}.values())
    if not new:
        return None
    return LogEntry(
        version=CacheVersion(latest.version.version + 1, latest.version.files + new, merged),
        run_id=run_id,
        operation="write",
        committed_at=time.time(),
        added=tuple(sorted(file.path for file in new)),
        removed=latest.removed,
    )


def uses_model(description: Mapping[str, Any], model: str) -> bool:
    """Whether a namespace's description names ``model`` as its model ref or digest."""
    return any(description.get(key) == model for key in MODEL_KEYS)


def figures(files: Iterable[CacheFile], now: float) -> dict[str, Any]:
    """Entries, bytes, files and entry ages (seconds; None without entries) of ``files``."""
    files = list(files)
    return {
        "files": len(files),
        "entries": sum(file.rows for file in files),
        "bytes": sum(file.bytes for file in files),
        "oldest_age_s": now - min(file.min_added_at for file in files) if files else None,
        "newest_age_s": now - max(file.max_added_at for file in files) if files else None,
    }


def checked_entries(entries: pa.Table) -> pa.Table:
    """``entries`` as a writer stores them: the three columns, sorted by key; ValueError when malformed."""
    if entries.num_rows == 0:
        raise ValueError("no entries to write: skip the write when a task has no misses")
    if missing := [name for name in COLUMNS if name not in entries.column_names]:
        raise ValueError(f"entries need columns {list(COLUMNS)}; missing {missing}")
    table = entries.select(list(COLUMNS))
    if table["key"].type != KEY_TYPE or table["key"].null_count:
        raise ValueError(f"keys must be non-null {KEY_TYPE}, got {table['key'].type}")
    tokens = table["tokens"].cast(pa.int64())
    table = table.set_column(2, "tokens", tokens).sort_by([("key", "ascending")])
    view = key_view(table["key"])
    if len(view) > 1 and not bool(np.all(view[1:] != view[:-1])):
        raise ValueError("keys must be unique: one row per key")
    return table


def sorted_keys(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``keys`` as one sorted array of unique, non-null ``binary(16)``; ValueError otherwise."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if keys.type != KEY_TYPE or keys.null_count:
        raise ValueError(f"keys must be non-null {KEY_TYPE}, got {keys.type}")
    view = key_view(keys)
    if len(view) > 1 and not bool(np.all(view[1:] > view[:-1])):
        keys = pc.unique(keys)
        keys = keys.take(pc.sort_indices(keys))
    return keys


def key_view(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``binary(16)`` keys as a NumPy ``S16`` array, without a copy where possible.

    ``S16`` compares as bytes do for equal-length values (NumPy's trailing-NUL padding cannot
    change the order of strings that all have 16 bytes), so ``searchsorted`` works on it.
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if len(keys) == 0:
        return np.array([], dtype="S16")
    return np.frombuffer(keys.buffers()[1], dtype="S16", count=len(keys), offset=keys.offset * 16)


def any_between(wanted: np.ndarray, low: bytes, high: bytes) -> bool:
    """Whether sorted ``wanted`` holds a key in ``[low, high]``."""
    at = int(np.searchsorted(wanted, np.bytes_(low), side="left"))
    return at < len(wanted) and bytes(wanted[at]).ljust(16, b"\0") <= high


def row_groups_holding(metadata: pq.FileMetaData, wanted: np.ndarray) -> list[int]:
    """The row groups whose key statistics hold one of ``wanted`` (a row group without statistics: read)."""
    chosen = []
    for index in range(metadata.num_row_groups):
        bounds = key_bounds(metadata, index)
        if bounds is None or any_between(wanted, *bounds):
            chosen.append(index)
    return chosen


def row_groups_in_range(metadata: pq.FileMetaData, low: bytes, high: bytes | None) -> list[int]:
    """The row groups whose key statistics meet ``[low, high)``."""
    chosen = []
    for index in range(metadata.num_row_groups):
        bounds = key_bounds(metadata, index)
        if bounds is None or (bounds[1] >= low and (high is None or bounds[0] < high)):
            chosen.append(index)
    return chosen


def key_bounds(metadata: pq.FileMetaData, index: int) -> tuple[bytes, bytes] | None:
    """Row group ``index``'s smallest and largest key, from its statistics (the key is column 0)."""
    statistics = metadata.row_group(index).column(0).statistics
    if statistics is None or not statistics.has_min_max:
        return None
    return bytes(statistics.min), bytes(statistics.max)


def key_slices(count: int) -> list[tuple[bytes, bytes | None]]:
    """``count`` equal slices of the 128-bit key space: ``[low, high)``, the last one open above."""
    bounds = [((2**64 * i) // count).to_bytes(8, "big") + bytes(8) for i in range(count)]
    return [(low, bounds[i + 1] if i + 1 < count else None) for i, low in enumerate(bounds)]


def check_value_type(parquet: pq.ParquetFile, file: CacheFile, value_type: pa.DataType, source: str) -> None:
    """CacheError unless ``parquet`` stores keys of :data:`KEY_TYPE` and values of ``value_type``."""
    schema = parquet.schema_arrow
    if schema.get_field_index("key") < 0 or schema.field("key").type != KEY_TYPE or "value" not in schema.names:
        raise CacheError(f"{source} is not a label cache data file (no {KEY_TYPE} key and value): the cache is damaged")
    stored = schema.field("value").type
    if stored != value_type:
        raise CacheError(
            f"{source} stores values of type {stored}, but this run's task gives {value_type}: namespace "
            f"{file.namespace} was written for other settings; use another cache, or drop the namespace with "
            "batchnlp cache compact --model"
        )


def empty_entries(value_type: pa.DataType) -> pa.Table:
    """No entries, with the columns of a data file."""
    schema = pa.schema([("key", KEY_TYPE), ("value", value_type), ("tokens", pa.int64()), ("added_at", pa.int64())])
    return schema.empty_table()


def concat(tables: list[pa.Table], value_type: pa.DataType) -> pa.Table:
    return pa.concat_tables(tables) if tables else empty_entries(value_type)


def deal(table: pa.Table, slices: list[tuple[bytes, bytes | None]]) -> list[pa.Table]:
    """``table``'s entries split by the key slice they fall in, one table per slice."""
    lows = np.array([low for low, _ in slices], dtype="S16")
    where = np.searchsorted(lows, key_view(table["key"]), side="right") - 1
    order = np.argsort(where, kind="stable")
    counts = np.bincount(where, minlength=len(slices))
    ordered = table.take(pa.array(order))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [ordered.slice(int(offsets[i]), int(counts[i])) for i in range(len(slices))]


def in_slice(table: pa.Table, low: bytes, high: bytes | None) -> pa.Table:
    """The rows of ``table`` with ``low <= key < high`` (``high`` None: no upper bound)."""
    inside = pc.greater_equal(table["key"], pa.scalar(low, KEY_TYPE))
    if high is not None:
        inside = pc.and_(inside, pc.less(table["key"], pa.scalar(high, KEY_TYPE)))
    return table.filter(inside)


def first_of_each_key(table: pa.Table) -> pa.Table:
    """The first row of each run of equal keys in ``table`` (sorted by key)."""
    if table.num_rows < 2:
        return table
    view = key_view(table["key"])
    return table.filter(pa.array(np.concatenate([[True], view[1:] != view[:-1]])))


def parquet_bytes(table: pa.Table, namespace: str) -> bytes:
    """``table`` as a Parquet file: zstd, row groups of :data:`ROW_GROUP_ROWS`, key statistics, our footer key."""
    metadata = {FOOTER_KEY: json.dumps({"format": FORMAT, "namespace": namespace}).encode()}
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()
