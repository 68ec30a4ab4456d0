"""Measured throughput, kept in one place: ``performance.json`` beside this module.

``batchnlp plan`` and every run's estimate take their default tokens/s and start-up from it, and
docs/performance.md's Performance and Plan tables are checked against it, so a figure measured once is
not copied by hand into code and docs that then drift apart. CPU figures depend on the CPU:
the one chosen is the figure of the best-equipped machine whose flags this machine has (a CPU
without bf16 units emulates bf16 seven times slower), read from ``/proc/cpuinfo``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One measurement: DistilBERT-base on ``machine``, steady tokens/s of ``workers`` processes."""

    device: str
    precision: str
    per: str  # "gpu": the figure is one GPU's (its workers together); "worker": divide by workers
    workers: int
    tokens_per_second: float  # the whole machine's, after the first row
    first_row_s: float
    cpu_flags: tuple[str, ...]  # the flags the measuring CPU had that matter for speed
    machine: str
    source: str
    readme_table: str  # the docs/performance.md text just before the table the figure is copied into...
    readme_row: str  # ...and a cell of its row naming it (test_performance_figures.py compares them)
    backend: str = "torch"  # what ran the model (batchnlp.inference.backends)

    @property
    def rate(self) -> float:
        """Tokens/s of one GPU, or of one worker process on CPU."""
        return self.tokens_per_second / self.workers if self.per == "worker" else self.tokens_per_second


@cache
def figures() -> tuple[Figure, ...]:
    """Every measurement in ``performance.json``."""
    data = json.loads(files("batchnlp.execution").joinpath("performance.json").read_text(encoding="utf-8"))
    return tuple(Figure(**{**entry, "cpu_flags": tuple(entry["cpu_flags"])}) for entry in data["figures"])


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This machine's CPU flags (empty where ``/proc/cpuinfo`` is not there)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split()[2:])


def measured(device: str, precision: str, flags: frozenset[str] | None = None, backend: str = "torch") -> Figure | None:
    """The figure to plan ``device`` at ``precision`` on ``backend`` with; None when it was never measured.

    On CPU: the figure of the best-equipped machine whose flags ``flags`` (default: this machine's)
    include, that backend's where one was measured on such a machine (else another backend's), or
    failing those the plainest machine's, the cautious guess for a CPU unlike any measured.
    """
    found = [f for f in figures() if f.device == device and f.precision == precision]
    if device != "cpu" or not found:
        return found[0] if found else None
    flags = cpu_flags() if flags is None else flags
    usable = [f for f in found if set(f.cpu_flags) <= flags]
    own = [f for f in usable if f.backend == backend]
    if own or usable:
        return max(own or usable, key=lambda f: len(f.cpu_flags))
    return min(found, key=lambda f: len(f.cpu_flags))
