"""Object storage through fsspec: one place that turns URLs into filesystems and writes safely.

All I/O goes through fsspec (s3fs for ``s3://``) rather than pyarrow's own S3 client, because
only fsspec honours ``AWS_ENDPOINT_URL`` and the rest of the boto3 environment. Every
filesystem comes from :meth:`Location.split`, which adds the retry policy of
:mod:`batchnlp.util.retry`; what outlives the retries leaves through :func:`storage_errors` as an
error naming the operation and the object.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchnlp.errors import BatchnlpError, InputError, JobFailed, OutputError
from batchnlp.io.worker_credentials import public_options, with_local_secrets
from batchnlp.util.redaction import redact_url
from batchnlp.util.retry import filesystem_options

GLOB_CHARS = re.compile(r"[*?\[]")


def stays_inside(name: str) -> bool:
    """``name`` is a plain relative path that stays inside its directory: no leading ``/``, no
    ``..`` segment, nothing normalising would change. Output names are built from user values
    (run ids, partition values) and records are read back from storage: none may lead out."""
    return not name.startswith("/") and posixpath.normpath(name) == name and name != ".." and not name.startswith("../")


@dataclass(frozen=True, repr=False)
class Location:
    """A URL plus its fsspec options; picklable, so workers rebuild the filesystem themselves."""

    url: str
    storage_options: Mapping[str, Any]

    def __repr__(self) -> str:
        # Dask prints a failed task's arguments in worker logs: option values may be credentials.
        return f"Location({redact_url(self.url)!r}, storage_options={dict.fromkeys(self.storage_options, '***')})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a Dask task's argument), a location leaves its credentials behind: the embedded
        # cluster's workers get them from their environment (batchnlp.io.worker_credentials).
        return (Location, (self.url, public_options(self.storage_options)))

    @property
    def fs(self) -> Any:
        return self.split()[0]

    @property
    def path(self) -> str:
        return self.split()[1]

    def split(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        return url_to_fs(self.url, **filesystem_options(self.url, with_local_secrets(self.storage_options)))

    def child(self, name: str) -> str:
        """The fsspec path of ``name`` under this location (a directory or prefix); see :meth:`inside`."""
        return self.path.rstrip("/") + "/" + self.inside(name)

    def under(self, name: str) -> Location:
        """The location ``name`` inside this one (a run's own directory); see :meth:`inside`."""
        return Location(self.url.rstrip("/") + "/" + self.inside(name), self.storage_options)

    def inside(self, name: str) -> str:
        """``name``, a relative path that stays inside this location once normalised; else OutputError.
        Names are built from user values (run ids, partition values): none may lead out."""
        if not stays_inside(name.rstrip("/")):
            raise OutputError(f"{name!r} would lead out of {self.display()} or is no plain relative path: refused")
        return name

    def display(self, path: str | None = None) -> str:
        """A URL for messages: protocol kept, credentials and query strings removed."""
        fs, own = self.split()
        return redact_url(fs.unstrip_protocol(path if path is not None else own))

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)


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
    with storage_errors("list", location.display(), InputError, what="input"):
        if GLOB_CHARS.search(path):
            found = fs.glob(path, detail=True)
            if not found:
                _check_bucket(fs, path, InputError, "input")
                raise InputError(f"input {location.display()} matches no files; check the pattern")
        elif fs.isdir(path):
            root = path.rstrip("/")
            found = fs.find(path, detail=True)
            if not found:
                raise InputError(f"input directory {location.display()} is empty")
        elif fs.isfile(path):
            found = {path: fs.info(path)}
        else:
            fs.info(path)  # isdir and isfile answer False to a 403 or a missing bucket: info raises which
            raise InputError(f"input {location.display()} does not exist")
    files = [
        input_file(p, info)
        for p, info in sorted(found.items())
        if info.get("type", "file") == "file" and not _hidden(p, root)
    ]
    if not files:
        raise InputError(f"input {location.display()} holds no data files (only hidden or _ names)")
    return files


def input_file(path: str, info: Mapping[str, Any]) -> InputFile:
    """A listed file as a plan records it: ``info`` is what the filesystem's ``info``/``find`` says of it."""
    return InputFile(path=path, size=int(info.get("size") or 0), etag=_etag(info))


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
    _check_bucket(fs, path, OutputError, "output")  # not exists: it answers False to a 403 too


def write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Make ``path`` appear whole or not at all.

    Object stores publish an object atomically when its PUT completes; on local disk the bytes
    go to a unique temporary name in the same directory and are renamed over the target.
    """
    with storage_errors("write", fs.unstrip_protocol(path)):
        if not is_local(fs):
            fs.pipe_file(path, data)
            return
        publish_local(path, data, os.replace)


def publish_local(path: str, data: bytes, publish: Any) -> None:
    """Write ``data`` whole to a unique temporary file beside local ``path`` (``NAME.tmp-<hex>``,
    the name :mod:`batchnlp.ledger.ownership` knows), then ``publish(tmp, path)``: ``os.replace`` to
    replace atomically, ``os.link`` to create only (FileExistsError when ``path`` exists)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        publish(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.remove(tmp)  # after a link, or a failed publish; os.replace moved it already


def create_only(fs: Any, path: str, data: bytes) -> bool:
    """Write ``path`` only if it does not exist yet (S3 ``If-None-Match: *``, local ``O_EXCL``).

    Returns False, writing nothing, when it exists holding other bytes. When it holds exactly
    ``data``, the write was ours: a PUT whose answer came too late (past the read timeout) or
    never is retried, and the retry finds the object its first attempt created. Every caller's
    body names its run, so another run's object never matches. s3fs (2026.9) sends
    ``If-None-Match`` only with a non-empty body (an empty file is "touched" unconditionally),
    so an empty body would not be create-only: refuse it.
    """
    if not data:
        raise ValueError("create-only writes need a non-empty body (s3fs touches empty files unconditionally)")
    url = fs.unstrip_protocol(path)
    try:
        with storage_errors("write", url):
            if is_local(fs):  # not O_EXCL, which makes the name before the bytes arrive: a link of a whole file
                publish_local(path, data, os.link)
            else:
                with fs.open(path, "xb") as handle:
                    handle.write(data)
    except FileExistsError:
        with storage_errors("read", url):
            try:
                return fs.cat_file(path) == data
            except FileNotFoundError:
                return False  # removed since: the caller decides whether to try again
    return True


def write_create_only(fs: Any, path: str, data: bytes) -> None:
    """:func:`create_only` for the commit markers, so two drivers racing on one output cannot both commit."""
    if not create_only(fs, path, data):
        raise OutputError(
            f"{fs.unstrip_protocol(path)} already exists: another run committed this output; "
            "use --overwrite to replace it"
        )


S3_ACTIONS = {"read": "s3:GetObject", "write": "s3:PutObject", "list": "s3:ListBucket", "delete": "s3:DeleteObject"}


@contextmanager
def storage_errors(
    operation: str, url: str, error: type[BatchnlpError] = OutputError, what: str = ""
) -> Iterator[None]:
    """Turn a storage failure in the block into a :class:`BatchnlpError` naming ``operation`` and ``url``.

    ``operation`` is "read", "write", "list" or "delete"; ``url`` a display URL (no credentials).
    A refusal (403, a missing bucket or key, no credentials) becomes ``error``: exit 2, fix the
    role or the URL, do not retry. A failure that outlived the retry policy (5xx, dropped
    connections, timeouts) becomes :class:`JobFailed`: exit 1, running again may help.
    ``FileExistsError`` passes through (create-only writes expect it), as does anything that is
    not a storage failure.
    """
    try:
        yield
    except (BatchnlpError, FileExistsError):
        raise
    except Exception as e:
        translated = storage_error(e, operation, url, error, what)
        if translated is None:
            raise
        raise translated from e


def storage_error(
    e: BaseException, operation: str, url: str, error: type[BatchnlpError] = OutputError, what: str = ""
) -> BatchnlpError | None:
    """The error :func:`storage_errors` raises for ``e``, or None when ``e`` is no storage failure."""
    label = f"{what} " if what else ""
    parts = urlsplit(url)
    remote = len(parts.scheme) > 1 and parts.scheme != "file"
    if parts.scheme == "file":
        url = parts.path  # local files by their path
    if parts.scheme in ("s3", "s3a"):
        store = "S3"
    elif parts.scheme in ("http", "https"):  # an endpoint, what botocore names when no call site did
        store = "the store"
    else:
        store = f"{parts.scheme}://" if remote else ""
    status, code, message, attempts = service_error(e)
    answer = " ".join(dict.fromkeys(str(value) for value in (status, code) if value))  # "403 AccessDenied"
    if message and message != code:
        answer += f" {message}" if code == str(status) else f": {message}"  # "403 Forbidden" for a HEAD
    if isinstance(e, PermissionError):
        if not remote:
            return error(f"permission denied: cannot {operation} {url}")
        action = S3_ACTIONS.get(operation, "access") if store == "S3" else "access"
        return error(
            f"{store} refused to {operation} {url} ({answer or 'access denied'}): "
            f"check that the job's credentials allow {action} there"
        )
    if isinstance(e, FileNotFoundError) and (remote or operation != "write"):
        key = parts.path.strip("/")
        if remote and (code == "NoSuchBucket" or (not key and str(status) == "404")):
            return error(
                f"{label}bucket {parts.netloc!r} does not exist (cannot {operation} {url}); "
                "create it first or fix the URL"
            )
        return error(f"{label}{url} does not exist")
    if _is_credentials_error(e):
        return error(f"no usable credentials to {operation} {url}: {e}")
    if not isinstance(e, OSError) and not _is_transport_error(e):
        return None
    if not remote:
        errno = getattr(e, "errno", None)
        return error(f"cannot {operation} {url}: {getattr(e, 'strerror', None) or e}") if errno is not None else None
    if status is None and not _is_transport_error(e) and not isinstance(e, TimeoutError | ConnectionError):
        return None  # an OSError of a reader (pyarrow on a corrupt file), not of the store
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return error(f"{store} refused to {operation} {url} ({answer})")  # a client error: retrying cannot help
    tries = f" after {attempts} attempts" if attempts else " after retries"
    return JobFailed(
        f"{store} kept failing to {operation} {url} ({answer or type(e).__name__ + ': ' + str(e)}){tries}; "
        "the store is failing or unreachable: run the job again (--resume keeps the finished parts)"
    )


def unnamed_storage_error(e: BaseException) -> BatchnlpError | None:
    """The CLI's net for a storage failure that reached a command through no :func:`storage_errors`:
    the same answer (a refusal exits 2, an outage 1), naming the endpoint it could not use, where
    botocore says which. None when ``e`` is no storage failure (a bug, reported as one)."""
    if not (_is_transport_error(e) or _is_credentials_error(e) or service_error(e)[0] is not None):
        return None
    return storage_error(e, "reach", getattr(e, "kwargs", {}).get("endpoint_url") or "s3://")


def service_error(e: BaseException) -> tuple[int | None, str | None, str | None, int | None]:
    """(HTTP status, error code, message, attempts) of the botocore answer behind ``e``, where there is one."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
            meta = response.get("ResponseMetadata") or {}
            retried = meta.get("RetryAttempts")
            return (
                meta.get("HTTPStatusCode"),
                response["Error"].get("Code"),
                response["Error"].get("Message"),
                retried + 1 if isinstance(retried, int) else None,
            )
        current = current.__cause__ or current.__context__
    return None, None, None, None


def _is_transport_error(e: BaseException) -> bool:
    """A dropped connection or a timeout that botocore and s3fs gave up retrying."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    if isinstance(e, BotoConnectionError | HTTPClientError):
        return True
    try:
        from aiohttp import ClientError
    except ImportError:
        return False
    return isinstance(e, ClientError)


def _is_credentials_error(e: BaseException) -> bool:
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return False
    return isinstance(e, NoCredentialsError | PartialCredentialsError)


def _check_bucket(fs: Any, path: str, error: type[BatchnlpError], what: str) -> None:
    """On S3, name ``path``'s bucket when it is missing or refused (listings just come back empty)."""
    if _is_s3(fs):
        bucket = path.split("/", 1)[0]
        with storage_errors("list", fs.unstrip_protocol(bucket), error, what):
            fs.info(bucket)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local filesystem (atomic renames, no ETags)."""
    return "file" in _protocols(fs)


def _is_s3(fs: Any) -> bool:
    return bool({"s3", "s3a"} & set(_protocols(fs)))


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
