"""Graceful stop: SIGTERM and SIGINT drain the run instead of killing it mid-write.

Schedulers stop a job by signal, then kill it: ECS sends SIGTERM and SIGKILL 30 s later (its
``ECS_CONTAINER_STOP_TIMEOUT``), Kubernetes after ``terminationGracePeriodSeconds``, a Spot
reclaim two minutes after its notice. Dying at once would leave the lock behind for the next
attempt and worker processes without their driver.

While the runner collects finished units it only notes the signal (:attr:`GracefulStop.requested`),
stops starting units, gives the running ones ``--grace-seconds`` to finish (until
:attr:`GracefulStop.deadline`), records them, and then raises :class:`~batchnlp.errors.Interrupted`:
the cluster is closed and the lock released on the way out, and the exit code (143 for
SIGTERM) is one the retry rules retry. Outside that
loop (planning, loading models) there is nothing worth waiting for, so the signal raises
``Interrupted`` at once, as Python's own SIGINT raises ``KeyboardInterrupt``. A second signal
always raises at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from batchnlp.errors import Interrupted

logger = logging.getLogger(__name__)

# Leaves 10 s of ECS's default 30 s stop timeout to cancel the rest, close the workers and release the lock.
DEFAULT_GRACE_SECONDS = 20.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Owns SIGTERM/SIGINT for the duration of :meth:`installed`; the runner asks :attr:`requested`.

    A drain can also be requested without a signal (:meth:`request`: the Spot interruption
    notice, :mod:`batchnlp.execution.spot`); a signal during that drain brings its deadline forward to
    ``grace_seconds`` from then, a second signal ends it at once.
    """

    def __init__(self, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.requested = threading.Event()
        self.deadline = float("inf")  # time.monotonic() by which running units must have finished
        self.reason = ""
        self.signal_number = signal.SIGTERM.value  # the exit code's signal when a notice, not a signal, stopped it
        self._signals = 0
        self._draining = False

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Handle the signals in this block (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextmanager
    def draining(self) -> Iterator[None]:
        """In this block a first signal only starts a drain; the block drains and then calls :meth:`stop`."""
        self._draining = True
        try:
            if self.requested.is_set():  # arrived just before: nothing has started yet
                self.stop("no unit had started")
            yield
        finally:
            self._draining = False

    def request(self, reason: str, grace_seconds: float) -> None:
        """Start a drain (any thread): no new units, running ones have ``grace_seconds`` at most."""
        self.deadline = min(self.deadline, time.monotonic() + grace_seconds)
        self.reason = self.reason or reason
        logger.warning(
            "%s: no new units start; running units get %.0f s to finish",
            reason,
            self.deadline - time.monotonic(),
            extra={"event": "stopping", "reason": reason, "grace_seconds": round(grace_seconds, 1)},
        )
        self.requested.set()

    def stop(self, what: str) -> None:
        """End the run after a drain: ``what`` says what the drain kept."""
        raise Interrupted(
            f"run stopped, {self.reason}: {what}; the lock is released and a rerun with --resume (the next "
            "attempt of a scheduled job) keeps every finished part",
            self.signal_number,
        )

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self._signals += 1
        self.signal_number = number
        name = signal.Signals(number).name
        if self._signals == 1 and self._draining:
            self.request(f"{name} received", self.grace_seconds)
            return
        self.reason = f"{name} received"
        self.requested.set()  # should the raise below be swallowed, the drain's start still stops the run
        self.stop("a second signal" if self._signals > 1 else "before any unit ran")
