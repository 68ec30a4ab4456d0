"""Model refs → a local directory of safe files, checked: staging, the cache, checksums and digests.

Remote checkpoints are staged once per machine into a cache keyed by the remote listing (so a
changed model is fetched again); only config, tokenizer and ``*.safetensors`` files are copied,
and the JSON settings of sentence-transformers' module folders (``1_Pooling/config.json``).

The digest of a pinned ref (:func:`content_digest`) is sha256 over ``sha256sum``-style lines,
one per file directly under the checkpoint whose name matches :data:`STAGED_PATTERNS` (all but
``batchnlp-model.json``), and per JSON file of a module folder (named by its relative path), sorted
by name: the same for a directory and its copy in S3. A pinned
ref is checked where it is staged, on the driver and again on every worker, so weights replaced
between two nights, or between the driver's check and a worker's download, stop the run.

The driver's pre-flight (:func:`check_ref`) and ``batchnlp models digest`` (:func:`pinned`) live
here rather than beside :class:`~batchnlp.inference.models.refs.ModelRef`: both list, stage or hash
the files, and the refs module stays free of storage (staging imports it, not the reverse).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from batchnlp.errors import JobFailed, ModelError
from batchnlp.inference.models.load import check_files
from batchnlp.inference.models.refs import ModelRef, parse_ref

STAGED_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
PROVENANCE = "batchnlp-model.json"  # written by `batchnlp models pull`; outside the digest (it holds a time)
# sentence-transformers keeps each module's settings in a folder named by its index and kind
# (1_Pooling/, 2_Normalize/): its JSON files are part of the checkpoint, by their relative paths.
MODULE_FOLDER = re.compile(r"[0-9]+_[A-Za-z]+")
STAGE_ATTEMPTS = 3  # downloads of a remote model that kept changing while it was copied


def check_ref(ref: str, storage_options: Mapping[str, Any]) -> str:
    """Driver-side pre-flight: the model exists and has safetensors weights, before any work.

    Returns the model's version, so ``--resume`` can refuse a model that changed under the same
    ref: a Hub commit hash, the ETags of a remote prefix's files, or the content digest of a
    local directory (content, not mtimes: a copied checkpoint is the same model). A pinned ref's
    version is its pin, checked against the files: an ``s3://`` one is staged into this
    machine's cache to hash it, where workers on this machine then find it.
    """
    parsed = parse_ref(ref)
    if parsed.digest:
        stage_and_hash(ref, storage_options)
        return parsed.digest
    if parsed.kind == "local":
        return content_digest(content_checksums(_local_dir(parsed)))
    if parsed.kind == "remote":
        listing = remote_listing(parsed, storage_options)
        check_files(ref, [name for name, _ in listing])
        return "etags:" + _digest(listing)
    names, commit = _hub_files(parsed)
    check_files(ref, names)
    return f"revision:{commit}"


def stage(ref: str, storage_options: Mapping[str, Any], cache_dir: str | None = None) -> Path:
    """A local directory holding the checkpoint's config, tokenizer and safetensors weights.

    A pinned ref's files are hashed and must match its pin.
    """
    parsed = parse_ref(ref)
    if parsed.digest:
        return stage_and_hash(ref, storage_options, cache_dir)[0]
    return _stage(parsed, storage_options, cache_dir)


def stage_and_hash(
    ref: str, storage_options: Mapping[str, Any], cache_dir: str | None = None
) -> tuple[Path, dict[str, str]]:
    """The staged directory and the sha256 of each file its digest covers; a pinned ref's pin verified.

    Workers use it: one pass over the files gives both the weights' checksums for the manifest
    and the check of the pin.
    """
    parsed = parse_ref(ref)
    directory = _stage(parsed, storage_options, cache_dir)
    checksums = content_checksums(directory)
    if parsed.digest:
        actual = content_digest(checksums)
        if actual != parsed.digest:
            raise ModelError(
                f"model {parsed.name} has digest {actual}, but the spec pins {parsed.digest}: its files changed "
                "since the pin was taken, and batchnlp does not label with other weights than the pinned ones. "
                f"Put the pinned checkpoint back at {parsed.name}, or, if the new weights are meant, pin them "
                f"instead (batchnlp models digest {parsed.name} prints the new ref)"
            )
    return directory, checksums


def pinned(ref: str, storage_options: Mapping[str, Any]) -> str:
    """``ref`` pinned to what it holds now: ``DIR_OR_URL@sha256:<hex>``, or ``HUB_ID@COMMIT`` for the Hub.

    A URL's files are staged into this machine's cache (downloaded once) to hash them; a pin
    already on ``ref`` must match.
    """
    from batchnlp.util.redaction import redact_url

    parsed = parse_ref(ref)
    if parsed.kind == "hub":
        names, commit = _hub_files(parsed)
        check_files(ref, names)
        return f"{parsed.location}@{commit}"
    _, checksums = stage_and_hash(ref, storage_options)
    return f"{redact_url(parsed.name)}@{content_digest(checksums)}"


def _stage(parsed: ModelRef, storage_options: Mapping[str, Any], cache_dir: str | None) -> Path:
    if parsed.kind == "local":
        return _local_dir(parsed)
    if parsed.kind == "hub":
        return _stage_hub(parsed)
    return _stage_remote(parsed, storage_options, Path(cache_dir or default_cache_dir()))


def _local_dir(parsed: ModelRef) -> Path:
    path = Path(parsed.location)
    if not path.is_dir():
        raise ModelError(f"model directory {parsed.raw!r} not found")
    check_files(parsed.raw, [p.name for p in path.iterdir()])
    return path


def default_cache_dir() -> str:
    return os.environ.get("BATCHNLP_CACHE", os.path.join(Path.home(), ".cache", "batchnlp", "models"))


def weight_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every weight file, recorded in the manifest so a run names exactly its model."""
    return {path.name: file_sha256(path) for path in sorted(directory.glob("*.safetensors"))}


def weights_of(checksums: Mapping[str, str]) -> dict[str, str]:
    """The weight files' entries of :func:`content_checksums`: what :func:`weight_checksums` gives."""
    return {name: checksums[name] for name in sorted(checksums) if name.endswith(".safetensors")}


def is_content(name: str) -> bool:
    """A file the digest covers: one batchnlp stages (config, tokenizer, weights, a module folder's
    settings), not the provenance. ``name`` is relative to the checkpoint, ``/``-separated."""
    folder, _, base = name.rpartition("/")
    if folder:
        return bool(MODULE_FOLDER.fullmatch(folder)) and fnmatchcase(base, "*.json")
    return name != PROVENANCE and any(fnmatchcase(name, pattern) for pattern in STAGED_PATTERNS)


def content_checksums(directory: Path) -> dict[str, str]:
    """sha256 of each file of ``directory`` that the digest covers, by relative name."""
    folders = [p for p in directory.iterdir() if p.is_dir() and MODULE_FOLDER.fullmatch(p.name)]
    files = [p for place in (directory, *folders) for p in place.iterdir() if p.is_file()]
    named = {p.relative_to(directory).as_posix(): p for p in files}
    return {name: file_sha256(named[name]) for name in sorted(named) if is_content(name)}


def content_digest(checksums: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of a checkpoint: sha256 over ``"<file sha256>  <name>\\n"`` lines sorted by name.

    Those are the lines ``sha256sum`` prints, so in a checkpoint directory (or a copy of an S3
    prefix) this reproduces it::

        { ls -A | grep -E '[.](json|txt|model|safetensors)$' | grep -vx batchnlp-model.json
          ls -d [0-9]*_*/*.json 2>/dev/null; } | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum
    """
    lines = "".join(f"{checksums[name]}  {name}\n" for name in sorted(checksums))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:24]


def remote_listing(parsed: ModelRef, storage_options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(relative name, version tag) of every file directly under a remote prefix or in one of its module
    folders (:data:`MODULE_FOLDER`)."""
    from batchnlp.io.storage import Location, storage_errors

    fs, path = Location(parsed.location, storage_options).split()  # with batchnlp.util.retry's policy
    root = path.rstrip("/")
    with storage_errors("list", fs.unstrip_protocol(path), ModelError, what="model"):
        try:
            # refresh: a long-lived worker's cached listing would hide a re-uploaded model
            entries = fs.ls(root, detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
        for folder in [e["name"] for e in entries if e.get("type") == "directory"]:
            if MODULE_FOLDER.fullmatch(folder.rstrip("/").rsplit("/", 1)[-1]):
                entries += fs.ls(folder.rstrip("/"), detail=True, refresh=True)
    files = [
        (entry["name"].removeprefix(root + "/"), str(entry.get("ETag") or entry.get("size")))
        for entry in entries
        if entry.get("type") == "file"
    ]
    if not files:
        raise ModelError(f"model {parsed.raw!r} not found: nothing under that prefix")
    return sorted(files)


def _stage_remote(parsed: ModelRef, storage_options: Mapping[str, Any], cache: Path) -> Path:
    """Download once per machine; a concurrent worker either wins the rename or reuses the result.

    The prefix is listed again after the download: a model replaced while it was being copied
    could leave a mix of two checkpoints under the first listing's key, so that copy is dropped
    and the new one fetched.
    """
    from batchnlp.io.storage import Location, storage_errors

    fs, path = Location(parsed.location, storage_options).split()
    listing = remote_listing(parsed, storage_options)
    for _ in range(STAGE_ATTEMPTS):
        check_files(parsed.raw, [name for name, _ in listing])
        key = _digest((parsed.location, listing))
        target = cache / key
        if target.is_dir():
            return target
        partial = cache / f".{key}.{uuid.uuid4().hex}"
        partial.mkdir(parents=True)
        try:
            for name, _ in listing:
                if is_content(name) or name == PROVENANCE:
                    source = f"{path.rstrip('/')}/{name}"
                    (partial / name).parent.mkdir(exist_ok=True)
                    with storage_errors("read", fs.unstrip_protocol(source), ModelError, what="model"):
                        fs.get_file(source, str(partial / name))
            copied, listing = listing, remote_listing(parsed, storage_options)
            if listing != copied:
                continue
            try:
                partial.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target
    raise JobFailed(
        f"model {parsed.name} changed {STAGE_ATTEMPTS} times while it was being downloaded; "
        "run again once its upload has finished"
    )


def _hub_files(parsed: ModelRef) -> tuple[list[str], str]:
    """File names and commit hash of a Hub checkpoint without downloading it (cache only when offline)."""
    from huggingface_hub import constants, snapshot_download

    try:
        if constants.HF_HUB_OFFLINE:
            path = snapshot_download(parsed.location, revision=parsed.revision, local_files_only=True)
            return os.listdir(path), Path(path).name  # the snapshot directory is named by its commit
        infos = snapshot_download(parsed.location, revision=parsed.revision, dry_run=True)
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise hub_error(parsed, e) from e
    return [info.filename for info in infos], infos[0].commit_hash if infos else "unknown"


def _stage_hub(parsed: ModelRef) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(parsed.location, revision=parsed.revision, allow_patterns=list(STAGED_PATTERNS))
    except Exception as e:
        raise hub_error(parsed, e) from e
    check_files(parsed.raw, os.listdir(path))
    return Path(path)


def hub_error(parsed: ModelRef, error: Exception) -> ModelError:
    return ModelError(
        f"cannot fetch model {parsed.raw!r} from the Hugging Face Hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no detail'}); no local directory has that "
        "name either. Without Hub access, pass --model TASK=PATH_OR_S3 with a saved checkpoint"
    )
