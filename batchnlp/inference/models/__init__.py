"""Model refs → a local directory of safe files → a loaded tokenizer and model.

A ref is a local directory, any fsspec URL (``s3://bucket/models/x/``), or a Hub id with an
optional ``@revision``. Remote checkpoints are staged once per machine into a cache keyed by
the remote listing (so a changed model is fetched again); only ``*.safetensors`` weights are
ever loaded, and remote code never runs.

A directory or URL may be pinned to its content, ``REF@sha256:<64 hex>`` as container images
are. The digest (:func:`content_digest`) is sha256 over ``sha256sum``-style lines, one per file
directly under the checkpoint whose name matches :data:`STAGED_PATTERNS` (all but
``batchnlp-model.json``), sorted by name: the same for a directory and its copy in S3. A pinned
ref is checked where it is staged, on the driver and again on every worker, so weights replaced
between two nights, or between the driver's check and a worker's download, stop the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from batchnlp.errors import JobFailed, ModelError

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors",)
STAGED_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROVENANCE = "batchnlp-model.json"  # written by `batchnlp models pull`; outside the digest (it holds a time)
PIN = "@sha256:"
STAGE_ATTEMPTS = 3  # downloads of a remote model that kept changing while it was copied


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference."""

    raw: str
    kind: Literal["local", "remote", "hub"]
    location: str
    revision: str | None = None
    digest: str | None = None  # "sha256:<64 hex>" when the ref pins its content

    @property
    def name(self) -> str:
        """The ref without its pin: where the model is."""
        return self.raw[: self.raw.lower().find(PIN)] if self.digest else self.raw


def parse_ref(ref: str) -> ModelRef:
    base, digest = _split_pin(ref)
    if "://" in base:
        if base.startswith("file://"):
            return ModelRef(ref, "local", base.removeprefix("file://"), digest=digest)
        return ModelRef(ref, "remote", base, digest=digest)
    path = Path(base).expanduser()
    if path.exists() or base.startswith(("/", ".", "~")):
        return ModelRef(ref, "local", str(path), digest=digest)
    if digest:
        raise ModelError(
            f"model {ref!r} pins a digest, but {base!r} is neither a directory here nor a URL, so it would be a "
            "Hugging Face Hub id, and Hub refs pin by commit: write ID@COMMIT (batchnlp models digest ID prints it)"
        )
    repo, _, revision = ref.partition("@")
    return ModelRef(ref, "hub", repo, revision or None)


def _split_pin(ref: str) -> tuple[str, str | None]:
    """(ref without its pin, "sha256:<hex>" or None). Hub revisions are git refs, which never hold ':'."""
    at = ref.lower().find(PIN)
    if at < 0:
        return ref, None
    base, pin = ref[:at], ref[at + len(PIN) :]
    if not base or not re.fullmatch(r"[0-9a-fA-F]{64}", pin):
        raise ModelError(
            f"model {ref!r} has a malformed digest pin {ref[at + 1 :]!r}: a pin ends the ref with @sha256: and "
            "64 hex digits, as `batchnlp models digest REF` prints it"
        )
    return base, "sha256:" + pin.lower()


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
        _check_files(ref, [name for name, _ in listing])
        return "etags:" + _digest(listing)
    names, commit = _hub_files(parsed)
    _check_files(ref, names)
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
        _check_files(ref, names)
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
    _check_files(parsed.raw, [p.name for p in path.iterdir()])
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
    """A file the digest covers: one batchnlp stages (config, tokenizer, weights), not the provenance."""
    return name != PROVENANCE and any(fnmatchcase(name, pattern) for pattern in STAGED_PATTERNS)


def content_checksums(directory: Path) -> dict[str, str]:
    """sha256 of each file directly in ``directory`` that the digest covers, by name."""
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and is_content(p.name)}


def content_digest(checksums: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of a checkpoint: sha256 over ``"<file sha256>  <name>\\n"`` lines sorted by name.

    Those are the lines ``sha256sum`` prints, so in a checkpoint directory (or a copy of an S3
    prefix) this reproduces it::

        ls -A | grep -E '[.](json|txt|model|safetensors)$' | grep -vx batchnlp-model.json \\
           | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum
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


def load_sequence_classifier(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) in fp32 on the CPU; the engine moves and converts the model. The model's
    output has ``logits``; a DistilBERT classifier's last layer runs for the first token only."""
    return _load(directory, ref, "sequence_classifier", "a sequence classifier")


def load_question_answerer(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) of an extractive QA checkpoint (``start_logits``, ``end_logits``), fp32 on the CPU."""
    return _load(directory, ref, "question_answerer", "a question-answering model")


def _load(directory: Path, ref: str, head: str, what: str) -> tuple[Any, Any]:
    """Safetensors only, no remote code, and a fast tokenizer: tasks need its offsets and windows.

    DistilBERT checkpoints load as :mod:`batchnlp.inference.distilbert`'s modules, which spare the process
    transformers' modeling code; any other checkpoint, or one that module does not recognise
    exactly, loads through transformers' auto classes (imported only then).
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    from batchnlp.inference import distilbert

    auto_class: Any = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        model = distilbert.load(directory, head)
        if model is None:
            auto_class = _auto_class(head)
            model = _with_attention(directory, ref, auto_class)
    except (OSError, ValueError, KeyError) as e:
        if "trust_remote_code" in str(e):  # transformers' advice (pass trust_remote_code=True) is not ours
            raise ModelError(
                f"cannot load model {ref!r} as {what}: it needs its own Python code (auto_map in its config), "
                "and batchnlp never runs a checkpoint's code. Use a model type that transformers ships"
            ) from e
        raise ModelError(f"cannot load model {ref!r} as {what}: {e}") from e
    except RuntimeError as e:  # transformers' "size mismatch": a head or an embedding unlike the config's
        mismatches = _shape_mismatches(directory, auto_class) if auto_class else []
        if not mismatches:
            raise
        raise ModelError(
            f"model {ref!r} does not match its own config.json as {what}: {'; '.join(mismatches[:5])}. The checkpoint "
            "is malformed (its config names another head size, e.g. num_labels/id2label, or another vocabulary): "
            "fix config.json or save the model again with save_pretrained"
        ) from e
    except SafetensorError as e:  # a weights file whose header does not describe its bytes
        unreadable = ", ".join(_unreadable_weights(directory)) or "its weights"
        raise ModelError(
            f"cannot load model {ref!r} as {what}: safetensors cannot read {unreadable} ({e}), so the file is "
            "truncated or corrupt, as a copy or upload that did not finish leaves it: copy the checkpoint again"
        ) from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {ref!r} has no fast tokenizer (tokenizer.json); batchnlp needs one")
    return tokenizer, model.eval()


AUTO_CLASSES = {
    "sequence_classifier": "AutoModelForSequenceClassification",
    "question_answerer": "AutoModelForQuestionAnswering",
}


def _auto_class(head: str) -> Any:
    """transformers' auto class for ``head`` (its first checkpoint imports transformers' modeling code: seconds)."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[head])


def _with_attention(directory: Path, ref: str, auto_class: Any) -> Any:
    """The model with PyTorch's SDPA attention, or eager attention for the architectures transformers
    has no SDPA for (DeBERTa-v2/v3): slower, but the checkpoint runs, and the log says so once."""
    try:
        return auto_class.from_pretrained(
            directory, attn_implementation="sdpa", use_safetensors=True, trust_remote_code=False
        )
    except ValueError as e:
        if "scaled_dot_product_attention" not in str(e):
            raise
    if directory not in _EAGER_NOTED:
        _EAGER_NOTED.add(directory)
        logger.info("model %s has no SDPA attention in transformers; it runs with eager attention", ref)
    return auto_class.from_pretrained(
        directory, attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )


_EAGER_NOTED: set[Path] = set()  # checkpoints already logged as falling back to eager attention, in this process


def _shape_mismatches(directory: Path, auto_class: Any) -> list[str]:
    """Tensors of the checkpoint whose shape is not the one its config gives them, each named."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = auto_class.from_config(AutoConfig.from_pretrained(directory, trust_remote_code=False))
    except Exception:  # the config itself is unusable: say nothing more than transformers did
        return []
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = model.base_model_prefix
    found = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is no mapping
                name = next(
                    (n for n in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")) if n in expected), None
                )
                shape = list(weights.get_slice(key).get_shape())
                if name is not None and expected[name] != shape:
                    found.append(f"{key} is {shape} in {path.name}, but {expected[name]} for the config")
    return found


def _unreadable_weights(directory: Path) -> list[str]:
    """The names of the weight files safetensors refuses to open: transformers' error names none."""
    from safetensors import SafetensorError, safe_open

    unreadable = []
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):  # checks the header, and that the file holds every tensor it lists
                pass
        except SafetensorError:
            unreadable.append(path.name)
    return unreadable


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


def remote_listing(parsed: ModelRef, storage_options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(file name, version tag) of every file directly under a remote prefix."""
    from batchnlp.io.storage import Location, storage_errors

    fs, path = Location(parsed.location, storage_options).split()  # with batchnlp.util.retry's policy
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
    """Download once per machine; a concurrent worker either wins the rename or reuses the result.

    The prefix is listed again after the download: a model replaced while it was being copied
    could leave a mix of two checkpoints under the first listing's key, so that copy is dropped
    and the new one fetched.
    """
    from batchnlp.io.storage import Location, storage_errors

    fs, path = Location(parsed.location, storage_options).split()
    listing = remote_listing(parsed, storage_options)
    for _ in range(STAGE_ATTEMPTS):
        _check_files(parsed.raw, [name for name, _ in listing])
        key = _digest((parsed.location, listing))
        target = cache / key
        if target.is_dir():
            return target
        partial = cache / f".{key}.{uuid.uuid4().hex}"
        partial.mkdir(parents=True)
        try:
            for name, _ in listing:
                if any(fnmatchcase(name, pattern) for pattern in STAGED_PATTERNS):
                    source = f"{path.rstrip('/')}/{name}"
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
    _check_files(parsed.raw, os.listdir(path))
    return Path(path)


def hub_error(parsed: ModelRef, error: Exception) -> ModelError:
    return ModelError(
        f"cannot fetch model {parsed.raw!r} from the Hugging Face Hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no detail'}); no local directory has that "
        "name either. Without Hub access, pass --model TASK=PATH_OR_S3 with a saved checkpoint"
    )
