"""``batchnlp models pull`` and ``models ls``: checkpoints staged in object storage.

Jobs in private subnets cannot reach the Hugging Face Hub. ``pull`` copies a checkpoint's safe
files (config, tokenizer, ``*.safetensors``) from the Hub (where a network is available) or a
local directory to a prefix such as ``s3://bucket/models/sst2/``, and writes
``batchnlp-model.json`` last, naming the source, its revision, each file's sha256 and the
checkpoint's digest (:func:`batchnlp.inference.models.stage.content_digest`), which ``pull`` prints as the ref
to pin in a job spec. Jobs then load the model from that prefix; the manifest records its version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelError, OutputError
from batchnlp.inference.models.refs import parse_ref
from batchnlp.inference.models.stage import PROVENANCE, check_ref, content_checksums, content_digest, is_content, stage
from batchnlp.io.storage import Location, check_output, storage_errors


def pull(ref: str, dest: str, storage_options: Mapping[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Copy the checkpoint ``ref`` (Hub id[@revision] or local directory) to ``dest``; returns its provenance.

    The provenance's ``digest`` is the copy's: ``DEST@<digest>`` pins it. With ``overwrite``, the
    config, tokenizer and weight files of the model that was there and are not in this one (say
    the shards of a sharded checkpoint) are deleted, so the prefix holds exactly this checkpoint.
    """
    parsed = parse_ref(ref)
    if parsed.kind == "remote":
        raise ModelError(f"{ref!r} is already in object storage; pull copies from the Hub or a local directory")
    directory = stage(ref, storage_options)  # safetensors only, checked (a pin too); a Hub snapshot is named by commit
    if parsed.kind == "local":
        _refuse_links_out(ref, directory)
    revision = directory.name if parsed.kind == "hub" else None
    checksums = content_checksums(directory)
    location = Location(dest, storage_options)
    fs, root = location.split()
    with storage_errors("list", location.display(), OutputError, what="model destination"):
        existing = fs.exists(root) and fs.ls(root, detail=True, refresh=True)
    if existing and not overwrite:
        raise OutputError(f"{location.display()} already holds files; pass --overwrite to replace the model there")
    if overwrite:
        _check_replaceable(location, existing or [])
    provenance = {
        "source": ref,
        "revision": revision,
        "files": checksums,
        "digest": content_digest(checksums),
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    check_output(location)  # a new local folder is made; a missing bucket is named, never created
    for name in checksums:
        target = location.child(name)
        with storage_errors("write", fs.unstrip_protocol(target), OutputError):
            fs.put_file(str(directory / name), target)
    stale = [
        entry["name"]
        for entry in existing or []
        if entry.get("type") == "file"
        and is_content(name := entry["name"].rsplit("/", 1)[-1])
        and name not in checksums
    ]
    for path in stale:
        with storage_errors("delete", fs.unstrip_protocol(path), OutputError):
            fs.rm_file(path)
    with storage_errors("write", location.display(), OutputError):
        fs.pipe_file(location.child(PROVENANCE), json.dumps(provenance, indent=2).encode())
    check_ref(dest, storage_options)  # what a job will see: config, tokenizer and weights in place
    return provenance


def _check_replaceable(location: Location, existing: list[dict[str, Any]]) -> None:
    """``--overwrite`` deletes a model's files, so DEST must be a model's prefix (or empty), and never a
    bucket's root, a filesystem root or $HOME (:mod:`batchnlp.io.paths`)."""
    from batchnlp.io.paths import refused_destination

    refused = refused_destination(location.url, "overwrite")
    if refused:
        raise OutputError(refused[0])
    names = {entry["name"].rsplit("/", 1)[-1] for entry in existing if entry.get("type") == "file"}
    if existing and "config.json" not in names:
        raise OutputError(
            f"{location.display()} holds files but no model (no config.json): --overwrite replaces only a model "
            "that pull put there; choose another DEST"
        )


def _refuse_links_out(ref: str, directory: Path) -> None:
    """A local checkpoint's files are its own: a symlink to a file elsewhere (a key, another model) is not copied."""
    root = directory.resolve()
    out = [p.name for p in sorted(directory.iterdir()) if p.is_symlink() and not p.resolve().is_relative_to(root)]
    if out:
        raise ModelError(
            f"model directory {ref!r} holds symlinks that point outside it: {', '.join(out[:5])}; pull copies only "
            "the checkpoint's own files: copy the real files in (cp -L), then pull again"
        )


def list_models(url: str, storage_options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every checkpoint at ``url`` or one level below it: name, files, bytes, source and revision."""
    location = Location(url, storage_options)
    fs, root = location.split()
    with storage_errors("list", location.display(), OutputError, what="models"):
        entries = fs.ls(root.rstrip("/"), detail=True, refresh=True)
        candidates = [(root, entries)] + [
            (entry["name"], fs.ls(entry["name"], detail=True, refresh=True))
            for entry in entries
            if entry.get("type") == "directory"
        ]
        models = []
        for prefix, listing in candidates:
            names = {entry["name"].rsplit("/", 1)[-1]: entry for entry in listing if entry.get("type") == "file"}
            if "config.json" not in names:
                continue
            provenance = json.loads(fs.cat_file(f"{prefix}/{PROVENANCE}")) if PROVENANCE in names else {}
            models.append(
                {
                    "url": fs.unstrip_protocol(prefix),
                    "files": len(names),
                    "bytes": sum(int(entry.get("size") or 0) for entry in names.values()),
                    "source": provenance.get("source"),
                    "revision": provenance.get("revision"),
                    "pulled_at": provenance.get("pulled_at"),
                    "digest": provenance.get("digest"),
                }
            )
    return models
