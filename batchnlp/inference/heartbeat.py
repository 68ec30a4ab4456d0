"""Unit heartbeats: when each running unit last made progress, in the worker process that runs it.

A unit that hangs (a read that never returns, a wedged GPU) raises nothing and ends nothing; it
just stops beating. :func:`tracking` marks a Dask task as running in this process, :func:`beat`
(called after reading and after every model batch) moves its clock, and the driver asks every
worker for :func:`silences` (``client.run``) to find the units that have been silent too long.
Ages, not timestamps, travel back, so clocks of different machines never get compared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_last_beat: dict[str, float] = {}  # Dask key of a running task → time.monotonic() of its last progress
_current = threading.local()


@contextmanager
def tracking(key: str | None) -> Iterator[None]:
    """Beat for ``key`` while the block runs in this thread (Dask runs one task per thread)."""
    if key is None:
        yield
        return
    _current.key = key
    _last_beat[key] = time.monotonic()
    try:
        yield
    finally:
        _last_beat.pop(key, None)
        _current.key = None


def beat() -> None:
    """The task running in this thread made progress."""
    key = getattr(_current, "key", None)
    if key is not None:
        _last_beat[key] = time.monotonic()


def silences(dask_worker: Any = None) -> dict[str, float]:
    """Seconds since each running task of this process last beat (``client.run`` passes ``dask_worker``)."""
    now = time.monotonic()
    return {key: now - last for key, last in list(_last_beat.items())}
