"""One small object that only compare-and-swap writes may change: the store beneath :mod:`batchnlp.ledger.lock`.

A lease is safe only if every change to it says which version it replaces and fails when that
version is gone. Each store offers four operations, none a read-then-write:

- :meth:`create`: write the object only if there is none;
- :meth:`replace`: write it only if it is still the version (``etag``) the caller read;
- :meth:`delete`: remove it only if it is still that version;
- :meth:`read`: the record, its version, and its age **by the store's clock**.

**S3** does each in one request: ``PutObject`` with ``If-None-Match: *``, ``PutObject`` with
``If-Match: <ETag>``, ``DeleteObject`` with ``If-Match: <ETag>``; a stale ETag answers 412
``PreconditionFailed`` (a conditional write racing another answers 409
``ConditionalRequestConflict``: the caller lost that race too). A write retried after its answer was
lost fails its own condition when the first attempt had written; the object then holds exactly
the bytes sent, which no other writer's can equal, and that counts as written. s3fs 2026.9 sends
``If-None-Match`` for ``pipe_file(mode="create")`` and passes ``IfMatch`` through to
``put_object``; deletes go through its client call. The age is the GET answer's ``Date`` header
(the store's clock now) minus the object's ``LastModified`` (the store's clock at the last
write), so no driver's clock enters it.

**Local disk** has no ETag and no conditional rename: ``os.replace`` replaces whatever is there,
so "read, compare, rename" alone lets two drivers that read the same version both replace it,
each believing it won. So:

- create is a hard link of a fully written temporary file onto the name (``os.link`` fails
  when the name exists, like ``O_EXCL``, and readers never see a half-written file);
- replace and delete take an exclusive ``flock`` on the lock's directory, then read the file,
  compare its version, and ``os.replace`` or unlink it. Every replace and delete takes the same
  ``flock``, so between the compare and the write nothing else can change the file (a create
  cannot either: it only succeeds on a missing name, and the compare found one). The kernel drops
  a ``flock`` when its holder exits, so a killed driver leaves nothing stuck;
- the version is the MD5 of the file's bytes (what S3's ETag is for a single PUT). Every record
  carries a fresh nonce, so two writes never share a version and a replaced one cannot come back;
- the age is this host's clock minus the file's mtime, both the kernel's clock: a holder's own
  idea of the time is never read. (On a network filesystem the mtime is the server's: the two
  clocks must be NTP-synchronised there, and the filesystem must support ``flock``, as NFSv4 does.)
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batchnlp.io.storage import is_local, publish_local, service_error, storage_errors

LOST_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


@dataclass(frozen=True, kw_only=True)
class Version:
    """The object as read: its bytes, its version, and seconds since it was last written (store's clock)."""

    data: bytes
    etag: str
    age: float


class LeaseStore:
    """Conditional writes to one object (an S3 key or a local file); see the module's docstring."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs, self.path = fs, path
        self.url = fs.unstrip_protocol(path)
        self.local = is_local(fs)

    def read(self) -> Version | None:
        with storage_errors("read", self.url):
            return self._read_local() if self.local else self._read_s3()

    def create(self, data: bytes) -> str | None:
        """Write ``data`` if there is no object; its version, or None when one exists."""
        with storage_errors("write", self.url):
            if self.local:
                return self._create_local(data)
            try:
                return _etag(self.fs.pipe_file(self.path, data, mode="create"))
            except FileExistsError:
                return self._written(data)

    def replace(self, data: bytes, etag: str) -> str | None:
        """Write ``data`` if the object is still version ``etag``; the new version, or None when it is not."""
        with storage_errors("write", self.url):
            if self.local:
                with self._exclusive():
                    if self._local_etag() != etag:
                        return None
                    return self._write_local(data, os.replace)
            with _lost_race_is_none():
                return _etag(self.fs.pipe_file(self.path, data, IfMatch=etag))
            return self._written(data)

    def delete(self, etag: str) -> bool:
        """Remove the object if it is still version ``etag``; whether it was removed."""
        with storage_errors("delete", self.url):
            if self.local:
                with self._exclusive():
                    if self._local_etag() != etag:
                        return False
                    os.remove(self.path)
                    return True
            bucket, key, _ = self.fs.split_path(self.path)
            with _lost_race_is_none():
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
                self.fs.invalidate_cache(self.path)
                return True
        return False

    # --- S3 -------------------------------------------------------------------------------------

    def _written(self, data: bytes) -> str | None:
        """After a refused conditional write: the object's version if it holds exactly ``data``, else None.

        botocore retries a PUT whose answer was lost (a read timeout, a dropped connection); when
        the first attempt had written, the retry fails its own condition. Every body is unique (a
        nonce), so an object holding ``data`` is that first attempt's write: the write succeeded.
        """
        found = self._read_s3()
        return found.etag if found is not None and found.data == data else None

    def _read_s3(self) -> Version | None:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)
        try:
            response = self.fs.call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        try:  # the body streams on s3fs's event loop
            data = sync(self.fs.loop, response["Body"].read)
        finally:
            response["Body"].close()
        said = (response.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        store_now = email.utils.parsedate_to_datetime(said).timestamp() if said else time.time()
        return Version(data=data, etag=_etag(response), age=store_now - response["LastModified"].timestamp())

    # --- local disk -----------------------------------------------------------------------------

    def _read_local(self) -> Version | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                written = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return Version(data=data, etag=_md5(data), age=time.time() - written)

    def _local_etag(self) -> str | None:
        found = self._read_local()
        return found.etag if found else None

    def _create_local(self, data: bytes) -> str | None:
        try:
            return self._write_local(data, os.link)
        except FileExistsError:
            return None

    def _write_local(self, data: bytes, publish: Any) -> str:
        """Write ``data`` beside the lock, then ``publish`` it (link or replace); its version."""
        publish_local(self.path, data, publish)
        return _md5(data)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on the lock's directory: the compare-and-swap's critical section."""
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            yield
        finally:
            os.close(directory)  # releases the flock


@contextlib.contextmanager
def _lost_race_is_none() -> Iterator[None]:
    """Inside a conditional S3 write: a precondition that failed (or a missing object) ends the block quietly."""
    try:
        yield
    except FileNotFoundError:
        return
    except OSError as e:
        status, code, _, _ = service_error(e)
        if code in LOST_RACE_CODES or status in (409, 412):
            return
        raise


def _etag(response: Any) -> str:
    return str(response["ETag"]).strip('"')


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
