"""Model references: what a ``--model`` value names, parsed without touching any storage.

A ref is a local directory, any fsspec URL (``s3://bucket/models/x/``), or a Hub id with an
optional ``@revision``. A directory or URL may be pinned to its content, ``REF@sha256:<64 hex>``
as container images are (:func:`batchnlp.inference.models.stage.content_digest` says what the
digest covers); a Hub id pins by commit, ``ID@COMMIT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batchnlp.errors import ModelError

PIN = "@sha256:"


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
