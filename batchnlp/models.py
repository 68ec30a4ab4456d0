"""Model refs → a local directory of safe files → a loaded tokenizer and model.

A ref is a local directory, any fsspec URL (``s3://bucket/models/x/``), or a Hub id with an
optional ``@revision``. Remote checkpoints are staged once per machine into a cache keyed by
the remote listing (so a changed model is fetched again); only ``*.safetensors`` weights are
ever loaded, and remote code never runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchnlp.errors import ModelError

WEIGHT_PATTERNS = ("*.safetensors",)
STAGED_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference."""

    raw: str
    kind: Literal["local", "remote", "hub"]
    location: str
    revision: str | None = None


def parse_ref(ref: str) -> ModelRef:
    if "://" in ref:
        if ref.startswith("file://"):
            return ModelRef(ref, "local", ref.removeprefix("file://"))
        return ModelRef(ref, "remote", ref)
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith(("/", ".", "~")):
        return ModelRef(ref, "local", str(path))
    repo, _, revision = ref.partition("@")
    return ModelRef(ref, "hub", repo, revision or None)


def check_ref(ref: str, storage_options: Mapping[str, Any]) -> str:
    """Driver-side pre-flight: the model exists and has safetensors weights, before any work.

    Returns the model's version, so ``--resume`` can refuse a model that changed under the same
    ref: a Hub commit hash, the ETags of a remote prefix's files, or the content hash of a local
    directory's config and weights (content, not mtimes: a copied checkpoint is the same model).
    """
    parsed = parse_ref(ref)
    if parsed.kind == "local":
        path = Path(parsed.location)
        if not path.is_dir():
            raise ModelError(f"model directory {ref!r} not found")
        _check_files(ref, [p.name for p in path.iterdir()])
        contents = {**weight_checksums(path), "config.json": file_sha256(path / "config.json")}
        return "sha256:" + _digest(contents)
    if parsed.kind == "remote":
        listing = _remote_listing(parsed, storage_options)
        _check_files(ref, [name for name, _ in listing])
        return "etags:" + _digest(listing)
    names, commit = _hub_files(parsed)
    _check_files(ref, names)
    return f"revision:{commit}"


def stage(ref: str, storage_options: Mapping[str, Any], cache_dir: str | None = None) -> Path:
    """A local directory holding the checkpoint's config, tokenizer and safetensors weights."""
    parsed = parse_ref(ref)
    if parsed.kind == "local":
        path = Path(parsed.location)
        if not path.is_dir():
            raise ModelError(f"model directory {ref!r} not found")
        _check_files(ref, [p.name for p in path.iterdir()])
        return path
    if parsed.kind == "hub":
        return _stage_hub(parsed)
    return _stage_remote(parsed, storage_options, Path(cache_dir or default_cache_dir()))


def default_cache_dir() -> str:
    return os.environ.get("BATCHNLP_CACHE", os.path.join(Path.home(), ".cache", "batchnlp", "models"))


def weight_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every weight file, recorded in the manifest so a run names exactly its model."""
    return {path.name: file_sha256(path) for path in sorted(directory.glob("*.safetensors"))}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:24]


def load_sequence_classifier(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) in fp32 on the CPU; the engine moves and converts the model."""
    from transformers import AutoModelForSequenceClassification

    return _load(directory, ref, AutoModelForSequenceClassification, "a sequence classifier")


def load_question_answerer(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) of an extractive QA checkpoint (start/end logits), fp32 on the CPU."""
    from transformers import AutoModelForQuestionAnswering

    return _load(directory, ref, AutoModelForQuestionAnswering, "a question-answering model")


def _load(directory: Path, ref: str, auto_class: Any, what: str) -> tuple[Any, Any]:
    """Safetensors only, no remote code, and a fast tokenizer: tasks need its offsets and windows."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        model = auto_class.from_pretrained(
            directory, use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as e:
        if "trust_remote_code" in str(e):  # transformers' advice (pass trust_remote_code=True) is not ours
            raise ModelError(
                f"cannot load model {ref!r} as {what}: it needs its own Python code (auto_map in its config), "
                "and batchnlp never runs a checkpoint's code. Use a model type that transformers ships"
            ) from e
        raise ModelError(f"cannot load model {ref!r} as {what}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {ref!r} has no fast tokenizer (tokenizer.json); batchnlp needs one")
    return tokenizer, model.eval()


def _check_files(ref: str, names: list[str]) -> None:
    if "config.json" not in names:
        raise ModelError(f"model {ref!r} has no config.json; point --model at a saved checkpoint")
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ModelError(
            f"model {ref!r} has only pickle weights ({', '.join(sorted(pickles))}); batchnlp loads "
            "only *.safetensors, since pickle files can run code. Re-save the checkpoint with "
            "save_pretrained() in transformers ≥ 4.35, which writes model.safetensors"
        )
    raise ModelError(f"model {ref!r} has no *.safetensors weights")


def _remote_listing(parsed: ModelRef, storage_options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(file name, version tag) of every file directly under a remote prefix."""
    from batchnlp.storage import Location, storage_errors

    fs, path = Location(parsed.location, storage_options).split()  # with batchnlp.retry's policy
    with storage_errors("list", fs.unstrip_protocol(path), ModelError, what="model"):
        try:
            # refresh: a long-lived worker's cached listing would hide a re-uploaded model
            entries = fs.ls(path.rstrip("/"), detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
    files = [
        (entry["name"].rsplit("/", 1)[-1], str(entry.get("ETag") or entry.get("size")))
        for entry in entries
        if entry.get("type") == "file"
    ]
    if not files:
        raise ModelError(f"model {parsed.raw!r} not found: nothing under that prefix")
    return sorted(files)


def _stage_remote(parsed: ModelRef, storage_options: Mapping[str, Any], cache: Path) -> Path:
    """Download once per machine; a concurrent worker either wins the rename or reuses the result."""
    from fnmatch import fnmatch

    from batchnlp.storage import Location, storage_errors

    listing = _remote_listing(parsed, storage_options)
    _check_files(parsed.raw, [name for name, _ in listing])
    key = _digest((parsed.location, listing))
    target = cache / key
    if target.is_dir():
        return target
    fs, path = Location(parsed.location, storage_options).split()
    partial = cache / f".{key}.{uuid.uuid4().hex}"
    partial.mkdir(parents=True)
    try:
        for name, _ in listing:
            if any(fnmatch(name, pattern) for pattern in STAGED_PATTERNS):
                source = f"{path.rstrip('/')}/{name}"
                with storage_errors("read", fs.unstrip_protocol(source), ModelError, what="model"):
                    fs.get_file(source, str(partial / name))
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _hub_files(parsed: ModelRef) -> tuple[list[str], str]:
    """File names and commit hash of a Hub checkpoint without downloading it (cache only when offline)."""
    from huggingface_hub import constants, snapshot_download

    try:
        if constants.HF_HUB_OFFLINE:
            path = snapshot_download(parsed.location, revision=parsed.revision, local_files_only=True)
            return os.listdir(path), Path(path).name  # the snapshot directory is named by its commit
        infos = snapshot_download(parsed.location, revision=parsed.revision, dry_run=True)
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise _hub_error(parsed, e) from e
    return [info.filename for info in infos], infos[0].commit_hash if infos else "unknown"


def _stage_hub(parsed: ModelRef) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(parsed.location, revision=parsed.revision, allow_patterns=list(STAGED_PATTERNS))
    except Exception as e:
        raise _hub_error(parsed, e) from e
    _check_files(parsed.raw, os.listdir(path))
    return Path(path)


def _hub_error(parsed: ModelRef, error: Exception) -> ModelError:
    return ModelError(
        f"cannot fetch model {parsed.raw!r} from the Hugging Face Hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no detail'}); no local directory has that "
        "name either. Without Hub access, pass --model TASK=PATH_OR_S3 with a saved checkpoint"
    )
