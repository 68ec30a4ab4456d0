"""batchnlp: batch DistilBERT annotation of data lakes on Dask.

The public API (:mod:`batchnlp.api`): ``run``, ``commit``, ``plan``, ``distill``, ``submit`` and
``job_spec``, each doing what its command does, ``JobSpec``, and ``LabelCache`` (what ``batchnlp
cache`` inspects and compacts). Nothing heavy is imported here,
so ``import batchnlp`` and ``batchnlp --help`` stay instant: each name loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from batchnlp.version import __version__

API = {
    "run": "batchnlp.api",
    "commit": "batchnlp.api",
    "plan": "batchnlp.api",
    "distill": "batchnlp.api",
    "submit": "batchnlp.api",
    "job_spec": "batchnlp.api",
    "Submitted": "batchnlp.api",
    "JobSpec": "batchnlp.spec",
    "RunSummary": "batchnlp.execution.runner",
    "LabelCache": "batchnlp.ledger.label_cache",
}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'batchnlp' has no attribute {name!r}")
    return getattr(importlib.import_module(API[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
