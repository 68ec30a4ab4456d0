"""Object storage through fsspec: one place that turns URLs into filesystems and writes safely.

All I/O goes through fsspec (s3fs for ``s3://``) rather than pyarrow's own S3 client, because
only fsspec honours ``AWS_ENDPOINT_URL`` and the rest of the boto3 environment.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchnlp.errors import InputError, OutputError
from batchnlp.redaction import redact_url

GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Location:
    """A URL plus its fsspec options; picklable, so workers rebuild the filesystem themselves."""

    url: str
    storage_options: Mapping[str, Any]

    @property
    def fs(self) -> Any:
        return self.split()[0]

    @property
    def path(self) -> str:
        return self.split()[1]

    def split(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        return url_to_fs(self.url, **self.storage_options)

    def child(self, name: str) -> str:
        """The fsspec path of ``name`` under this location (a directory or prefix)."""
        return self.path.rstrip("/") + "/" + name

    def display(self, path: str | None = None) -> str:
        """A URL for messages: protocol kept, credentials and query strings removed."""
        fs, own = self.split()
        return redact_url(fs.unstrip_protocol(path if path is not None else own))

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)


@dataclass(frozen=True)
class InputFile:
    """One input file as listed at plan time; size and etag make the listing checkable."""

    path: str
    size: int
    etag: str | None = None


def list_input(location: Location) -> list[InputFile]:
    """Expand a file, directory/prefix or glob into its data files, in a stable order.

    Names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are skipped, as Spark and
    pyarrow do, so the output of one job can be the input of the next.
    """
    fs, path = location.split()
    root = ""
    try:
        if GLOB_CHARS.search(path):
            found = fs.glob(path, detail=True)
            if not found:
                raise InputError(f"input {location.display()} matches no files; check the pattern")
        elif fs.isdir(path):
            root = path.rstrip("/")
            found = fs.find(path, detail=True)
            if not found:
                raise InputError(f"input directory {location.display()} is empty")
        elif fs.isfile(path):
            found = {path: fs.info(path)}
        else:
            raise InputError(f"input {location.display()} does not exist")
    except (PermissionError, FileNotFoundError) as e:
        raise InputError(f"cannot list input {location.display()}: {e}") from e
    files = [
        InputFile(path=p, size=int(info.get("size") or 0), etag=_etag(info))
        for p, info in sorted(found.items())
        if info.get("type", "file") == "file" and not _hidden(p, root)
    ]
    if not files:
        raise InputError(f"input {location.display()} holds no data files (only hidden or _ names)")
    return files


def check_output(location: Location) -> None:
    """Fail early when the output cannot be written: a missing bucket is named, never created.

    ``S3FileSystem.makedirs`` would create a bucket from a typo, so only local outputs get
    directories made.
    """
    fs, path = location.split()
    if location.is_local:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory {path}: {e.strerror}") from e
        return
    if "s3" in _protocols(fs) or "s3a" in _protocols(fs):
        bucket = path.split("/", 1)[0]
        try:
            exists = fs.exists(bucket)
        except PermissionError as e:
            raise OutputError(f"no access to output bucket {bucket!r}: {e}") from e
        if not exists:
            raise OutputError(
                f"output bucket {bucket!r} does not exist (from {location.display()}); create it first or fix the URL"
            )


def write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Make ``path`` appear whole or not at all.

    Object stores publish an object atomically when its PUT completes; on local disk the bytes
    go to a unique temporary name in the same directory and are renamed over the target.
    """
    if "file" in _protocols(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def create_only(fs: Any, path: str, data: bytes) -> bool:
    """Write ``path`` only if it does not exist yet (S3 ``If-None-Match: *``, local ``O_EXCL``).

    Returns False, writing nothing, when it exists. s3fs (2026.9) sends ``If-None-Match`` only
    with a non-empty body (an empty file is "touched" unconditionally), so an empty body would
    not be create-only: refuse it.
    """
    if not data:
        raise ValueError("create-only writes need a non-empty body (s3fs touches empty files unconditionally)")
    try:
        with fs.open(path, "xb") as handle:
            handle.write(data)
    except FileExistsError:
        return False
    return True


def write_create_only(fs: Any, path: str, data: bytes) -> None:
    """:func:`create_only` for the commit markers, so two drivers racing on one output cannot both commit."""
    if not create_only(fs, path, data):
        raise OutputError(
            f"{fs.unstrip_protocol(path)} already exists: another run committed this output; "
            "use --overwrite to replace it"
        )


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _hidden(path: str, root: str) -> bool:
    """True when a name below ``root`` (or the file name, without a root) starts with _ or ."""
    relative = path[len(root) :] if root and path.startswith(root) else path.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/"))


def _etag(info: Mapping[str, Any]) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None
