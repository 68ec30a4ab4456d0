"""``--label-cache`` as a run uses it: one cache version read by every bucket, new labels written
beside it, and made live in the run's commit.

A run reads the version current when it starts (a sharded run: the version its first shard
planned with, stored in the shared plan, so every shard and the commit read the same one). Its
buckets (:mod:`batchnlp.execution.distinct`) look their distinct inputs up in that version and
write the labels they ran as new cache files, which no reader sees yet. The files travel in the
part records to the manifest; once the run's own commit holds (``_SUCCESS``, or the table's
commit), :func:`add_to_cache` makes them live in one create-only log version. A failed night adds
nothing; a retried commit of a committed run finishes an addition its first attempt did not make
(the cache's commit is idempotent per run id).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchnlp.io.worker_credentials import public_options
from batchnlp.ledger.label_cache import CacheFile, CacheVersion, LabelCache
from batchnlp.ledger.record import Manifest, PartResult
from batchnlp.spec import JobSpec
from batchnlp.util.redaction import redact_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheLookup:
    """What a bucket task needs of the label cache: small and picklable, with no credential (workers
    take those from their environment, as for the input)."""

    url: str
    storage_options: dict[str, Any]
    version: CacheVersion
    run_id: str
    added_at: int  # the run's start: a bucket run again writes the very same file
    _cache: list[LabelCache] = field(default_factory=list, compare=False, repr=False)

    @property
    def cache(self) -> LabelCache:
        if not self._cache:
            self._cache.append(LabelCache(self.url, self.storage_options))
        return self._cache[0]

    def find(self, space: str, keys: pa.Array, value_type: pa.DataType) -> tuple[pa.Table, dict[str, float]]:
        """The cache's entries (key, value, tokens) for ``keys`` of namespace ``space``, and what reading them cost."""
        clock = time.perf_counter()
        hits = self.cache.lookup(self.version, space, keys, value_type)
        cost = {
            "lookup_s": time.perf_counter() - clock,
            "lookup_bytes": hits.bytes_read,
            "lookup_files": hits.files_opened,
        }
        return hits.table.select(["key", "value", "tokens"]), cost

    def write(self, namespace: tuple[str, dict[str, Any]], entries: pa.Table) -> dict[str, Any]:
        """Write a bucket's new labels of one namespace as a cache file (live once the run commits); its record."""
        space, description = namespace
        file = self.cache.write(space, entries, self.run_id, self.added_at)
        return {"file": file.to_record(), "namespace": description}

    def __reduce__(self) -> tuple[Any, ...]:
        return (CacheLookup, (self.url, self.storage_options, self.version, self.run_id, self.added_at))


def open_lookup(spec: JobSpec, run_id: str, version: int | None = None) -> CacheLookup | None:
    """The run's lookup into ``spec.label_cache`` (None without one): at ``version`` (a sharded run's
    stored one), else the version current now."""
    if not spec.label_cache:
        return None
    cache = LabelCache(spec.label_cache, spec.storage_options)
    read = cache.current() if version is None else cache.entry(version).version if version else CacheVersion(0)
    logger.info(
        "label cache %s: reading version %d (%d files)",
        cache.display(),
        read.version,
        len(read.files),
        extra={"event": "label_cache", "version": read.version, "files": len(read.files)},
    )
    return CacheLookup(spec.label_cache, public_options(spec.storage_options), read, run_id, int(time.time()))


def cache_record(lookup: CacheLookup | None, results: list[PartResult]) -> dict[str, Any] | None:
    """The manifest's ``label_cache``: the cache, the version the run read, and the files it adds."""
    if lookup is None:
        return None
    return {
        "url": redact_url(lookup.url),
        "read_version": lookup.version.version,
        "added": [record for result in results for record in result.cache_files],
    }


def add_to_cache(spec: JobSpec, manifest: Manifest | None) -> CacheVersion | None:
    """Make a committed run's new labels live in its label cache, once (a rerun finds them committed)."""
    record = manifest.label_cache if manifest is not None else None
    if not spec.label_cache or not record or not record["added"]:
        return None
    cache = LabelCache(spec.label_cache, spec.storage_options)
    # One file per path: two shards (or attempts) whose bucket held the very same keys wrote one name.
    files = list({added["file"]["path"]: CacheFile.from_record(added["file"]) for added in record["added"]}.values())
    namespaces = {added["file"]["namespace"]: added["namespace"] for added in record["added"]}
    version = cache.commit(CacheVersion(record["read_version"]), files, namespaces, manifest.run_id)
    logger.info(
        "label cache %s: version %d holds run %s's %d new labels",
        cache.display(),
        version.version,
        manifest.run_id,
        sum(file.rows for file in files),
        extra={"event": "label_cache_commit", "version": version.version, "entries": sum(f.rows for f in files)},
    )
    return version
