"""batchnlp: batch DistilBERT annotation of data lakes on Dask.

Public API only; nothing heavy is imported here so ``batchnlp --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchnlp.version import __version__

__all__ = ["JobSpec", "__version__", "run"]

if TYPE_CHECKING:
    from batchnlp.execution.runner import RunSummary
    from batchnlp.spec import JobSpec


def run(spec: JobSpec | dict[str, Any]) -> RunSummary:
    """Run a job from a :class:`JobSpec` or a settings mapping (the YAML spec's keys)."""
    from batchnlp.execution.runner import run as run_job
    from batchnlp.spec import JobSpec

    return run_job(spec if isinstance(spec, JobSpec) else JobSpec.from_settings(spec))


def __getattr__(name: str) -> Any:
    if name == "JobSpec":
        from batchnlp.spec import JobSpec

        return JobSpec
    raise AttributeError(name)
