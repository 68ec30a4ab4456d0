"""Reading a YAML job spec file into settings: from a path, any fsspec URL, or an environment
variable; errors name the file, line and column."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batchnlp.errors import SpecError
from batchnlp.util.redaction import redact_url


def load_spec_file(ref: str | Path) -> dict[str, Any]:
    """Read a YAML job spec into a settings mapping; errors name the file and line.

    ``ref`` is a local path, any fsspec URL (``s3://bucket/specs/nightly.yaml``), or
    ``env:NAME`` for spec text held in an environment variable (how ``batchnlp submit`` hands
    a local spec to a container).
    """
    import yaml

    ref = str(ref)
    text = _spec_text(ref)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{ref}:{mark.line + 1}:{mark.column + 1}" if mark else ref
        raise SpecError(f"job spec {where} is not valid YAML: {getattr(e, 'problem', e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"job spec {ref} must be a mapping of settings, not {type(data).__name__}")
    return data


def _spec_text(ref: str) -> str:
    if ref.startswith("env:"):
        name = ref.removeprefix("env:")
        if name not in os.environ:
            raise SpecError(f"job spec {ref}: the environment variable {name} is not set")
        return os.environ[name]
    try:
        if "://" in ref:
            from batchnlp.io.storage import Location

            fs, path = Location(ref, {}).split()
            return fs.cat_file(path).decode("utf-8")
        return Path(ref).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read job spec {redact_url(ref)}: {getattr(e, 'strerror', None) or e}") from e
