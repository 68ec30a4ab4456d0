"""One job spec from its three sources: settings given now (flags, or keyword arguments of
:func:`batchnlp.run`) over a spec file over the defaults, with ``${name}`` placeholders filled.

The CLI and the Python API both build their JobSpec here, so a flag and a keyword argument
override a spec file the same way: scalars replace, mappings (models, cascades, storage and
catalog options) merge by key, and a write mode given now replaces the file's whole write mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

from batchnlp.spec import JobSpec
from batchnlp.spec.load import load_spec_file
from batchnlp.util.templating import render

MERGED_BY_KEY = ("models", "cascade", "storage_options", "catalog_options")
WRITE_MODE_KEYS = ("mode", "overwrite", "resume")


def merge(settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (a spec file's) with ``overrides`` (given now) over them."""
    merged = dict(settings)
    for key, value in overrides.items():
        if key in WRITE_MODE_KEYS:
            for mode_key in WRITE_MODE_KEYS:
                merged.pop(mode_key, None)
        if key in MERGED_BY_KEY:
            base = merged.get(key) if isinstance(merged.get(key), Mapping) else {}
            merged[key] = {**base, **dict(value)}
        else:
            merged[key] = value
    return merged


def compose(
    source: str | PathLike[str] | None = None,
    *,
    params: Mapping[str, str] | None = None,
    run_date: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> JobSpec:
    """The validated JobSpec of a spec file (a path, an s3:// URL or ``env:VARIABLE``; None: none)
    with ``overrides`` over it and ``${name}`` filled from ``params`` and ``run_date``."""
    settings = load_spec_file(source) if source else {}
    values = {**dict(params or {}), **({"run_date": run_date} if run_date else {})}
    return JobSpec.from_settings(render(merge(settings, overrides or {}), values))
