"""Results from the cluster as units finish, watched: a drain on SIGTERM, a restart for a stalled unit.

The runner submits every unit at once and reads results here. The loop polls instead of
blocking on the next result, so that between results it can

- **drain** after a SIGTERM (:class:`~batchnlp.execution.shutdown.GracefulStop`): cancel the units that
  have not started, let the running ones finish within the grace period, hand their results back
  to be recorded, then stop the run;
- **watch for stalls** (:class:`StallWatch`): a unit whose worker has not heard from it (see
  :mod:`batchnlp.inference.heartbeat`) for ``--unit-timeout`` seconds is named in the log and its worker
  restarted; Dask then runs the unit again on a healthy worker. A Python thread stuck in a read
  or a GPU call cannot be cancelled, only its process ended. Dask counts such a restart against
  the unit's ``allowed-failures`` (3), so a unit that hangs every time fails the job naming it;
- say when the whole job has made no progress for a while (a ``no_progress`` log event).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

from batchnlp.errors import BatchnlpError, JobFailed
from batchnlp.execution.shutdown import GracefulStop
from batchnlp.inference.heartbeat import silences
from batchnlp.io.formats import WorkUnit

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # between looks at the result queue: nothing compared with a unit's seconds
WATCH_SECONDS = 5.0  # between asks for every worker's heartbeats
ASK_TIMEOUT = 10.0  # a worker too wedged to answer its heartbeat query within this is no worse off unasked
# Without --unit-timeout: a unit is stalled when silent for this long, or for STALL_FACTOR times the
# median unit's whole duration if that is longer. A unit beats after its read and after every model
# batch, so silence means one read or one batch took this long: minutes cover a slow S3 read retried
# for its whole budget and a first CUDA kernel compile, and real hangs are hours.
UNIT_TIMEOUT_FLOOR = 600.0
STALL_FACTOR = 5.0
# A no_progress event after this long (or the unit timeout, if shorter) without a finished unit or a beat.
NO_PROGRESS_EVENT_SECONDS = 300.0


class StallWatch:
    """Finds units that stopped beating and restarts their workers."""

    def __init__(self, client: Any, unit_timeout: float | None = None) -> None:
        self.client, self.unit_timeout = client, unit_timeout
        self.durations: list[float] = []
        self.next_look = time.monotonic() + WATCH_SECONDS
        self.last_progress = time.monotonic()
        self.quiet_reported = 0.0

    @property
    def timeout(self) -> float:
        if self.unit_timeout is not None:
            return self.unit_timeout
        median = statistics.median(self.durations) if self.durations else 0.0
        return max(UNIT_TIMEOUT_FLOOR, STALL_FACTOR * median)

    def finished(self, seconds: float) -> None:
        self.durations.append(seconds)
        self.last_progress = time.monotonic()

    def look(self, units: dict[str, WorkUnit]) -> None:
        """Every ``WATCH_SECONDS``: restart the workers of units silent for longer than the timeout."""
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + WATCH_SECONDS
        heard = running_silences(self.client)
        ages = [age for running in heard.values() for age in running.values()]
        if ages:  # a beat since the last finished unit is progress too
            self.last_progress = max(self.last_progress, now - min(ages))
        self._report_quiet(now)
        limit = self.timeout
        for worker, running in heard.items():
            stalled = {key: age for key, age in running.items() if key in units and age > limit}
            if not stalled:
                continue
            for key, age in stalled.items():
                unit = units[key]
                logger.warning(
                    "unit %s (%s) made no progress for %.0f s (limit %.0f s, --unit-timeout) on worker %s: "
                    "restarting that worker; the unit runs again",
                    unit.id,
                    unit.describe(),
                    age,
                    limit,
                    worker,
                    extra={"event": "unit_stalled", "unit": unit.id, "worker": worker, "silent_s": round(age, 1)},
                )
            try:
                self.client.restart_workers([worker], timeout=60, raise_for_error=False)
            except Exception as e:  # an external cluster's worker without a nanny cannot be restarted
                logger.warning("could not restart worker %s: %s", worker, e)

    def _report_quiet(self, now: float) -> None:
        """A ``no_progress`` event each time the whole job has been still for another period."""
        quiet, period = now - self.last_progress, min(NO_PROGRESS_EVENT_SECONDS, self.timeout)
        if quiet >= period and quiet - self.quiet_reported >= period:
            self.quiet_reported = quiet
            logger.warning(
                "no progress for %.1f minutes: no unit finished and no running unit made progress",
                quiet / 60,
                extra={"event": "no_progress", "minutes": round(quiet / 60, 1)},
            )
        elif quiet < period:
            self.quiet_reported = 0.0


def running_silences(client: Any) -> dict[str, dict[str, float]]:
    """Worker address → {Dask key of each running task: seconds since it last beat}."""
    try:
        answers = client.run(silences, on_error="return", callback_timeout=ASK_TIMEOUT)
    except Exception as e:  # the scheduler itself did not answer in time: ask again next round
        logger.debug("heartbeat query failed: %s", e)
        return {}
    return {worker: ages for worker, ages in answers.items() if isinstance(ages, dict)}


def results(
    client: Any,
    futures: dict[Any, WorkUnit],
    stop: GracefulStop | None = None,
    watch: StallWatch | None = None,
    feeding: Any = None,
) -> Iterator[tuple[WorkUnit, Any]]:
    """(unit, result) as futures finish; the first failure cancels the rest and names its unit.

    ``feeding``: the tasks the units depend on (a deduplicated run's, :class:`batchnlp.execution.distinct.Feeding`):
    its ``watched`` futures are watched for stalls as units are, each named by its value's ``id`` and
    ``describe()``, and a drain lets the units its ``in_flight(started)`` names finish."""
    from distributed import as_completed

    from batchnlp.execution.worker import Refused

    pending = as_completed(futures)
    watched = feeding.watched if feeding is not None else {}
    units = {future.key: unit for future, unit in {**futures, **watched}.items()}
    draining = False
    try:
        while not pending.is_empty():
            ready = pending.next_batch(block=False) if pending.has_ready() else []
            for future in ready:
                if future.cancelled():  # not started when a drain began
                    continue
                unit = futures[future]
                try:
                    result = future.result()
                    if isinstance(result, Refused):
                        raise result.error(result.message)
                except BaseException as e:
                    client.cancel(list(futures))
                    if isinstance(e, BatchnlpError) or not isinstance(e, Exception):
                        raise
                    raise JobFailed(f"unit {unit.id} ({unit.describe()}) failed: {type(e).__name__}: {e}") from e
                if watch is not None:
                    watch.finished(result.busy_seconds)
                yield unit, result
            if stop is not None and stop.requested.is_set():
                if not draining:
                    draining = True
                    _cancel_unstarted(client, futures, feeding)
                elif time.monotonic() >= stop.deadline:
                    running = [future for future in futures if not future.done()]
                    client.cancel(running)
                    stop.stop(f"{len(running)} unit{'s' * (len(running) != 1)} still running after the grace period")
            elif watch is not None:
                watch.look(units)
            if not ready and stop is not None and not stop.requested.is_set():
                stop.requested.wait(POLL_SECONDS)  # wakes at once for a signal
            elif not ready:
                time.sleep(POLL_SECONDS)
    finally:  # left early (a failure, a stop, a consumer that stopped reading): nothing of ours keeps running
        # (the tasks that feed the units go with them: wanted by no unit, Dask releases them)
        left = [future for future in futures if not future.done()]
        if left:
            client.cancel(left)
    if draining and stop is not None and any(future.cancelled() for future in futures):
        stop.stop("every running unit finished and was recorded")
    # else every unit finished during the drain: nothing is lost by committing now


def _cancel_unstarted(client: Any, futures: dict[Any, WorkUnit], feeding: Any = None) -> None:
    """Cancel every unit no worker has started; the running ones finish (and those whose inputs are
    being computed, where ``feeding`` says so: a deduplicated run's wave in flight)."""
    started = {key for ages in running_silences(client).values() for key in ages}
    going = started | (feeding.in_flight(started) if feeding is not None else set())
    waiting = [future for future in futures if not future.done() and future.key not in going]
    client.cancel(waiting)
    running = sum(1 for future in futures if not future.done()) - len(waiting)
    logger.info(
        "draining: %d running units may finish, %d not started are cancelled",
        running,
        len(waiting),
        extra={"event": "draining", "units_running": running, "units_cancelled": len(waiting)},
    )
