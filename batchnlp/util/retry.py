"""How batchnlp rides out transient storage faults: one retry policy for every S3 client it makes.

:meth:`batchnlp.io.storage.Location.split` hands fsspec :func:`filesystem_options`: the user's
storage options with :func:`storage_options_for`'s botocore settings under them and, when the
time budget is on, a botocore session carrying the budget's retry handler. The driver, every Dask
worker (which rebuilds its filesystems from the picklable ``Location``, so the handler is attached
again in the worker's own process) and everything else that goes through ``Location`` get the same
policy.

A transient fault is retried for a **time budget**, not a count: throttling (``503 SlowDown``,
any ``429``, AWS's throttling codes), HTTP 500/502/503/504, S3's ``RequestTimeout``, dropped
connections and read or connect timeouts. S3 answers ``SlowDown`` precisely when it wants clients
to back off for longer, so a count of attempts with short waits gives up while the prefix is still
scaling. The handler retries for ``BATCHNLP_S3_RETRY_SECONDS`` (default :data:`RETRY_SECONDS`)
counted from the first fault of a streak, waiting a random time between 0 and
``min(2 ** (n - 1), BATCHNLP_S3_RETRY_MAX_BACKOFF)`` seconds before the n-th retry (exponential
backoff with full jitter: workers throttled together spread their retries instead of returning
together). A success, or an answer that no retry can change (403, 404, 412), ends the streak.
When the budget is spent the last answer stands: the unit fails, the job exits 1 naming the object
("S3 kept failing to write s3://... (500 InternalError: ...) after N attempts") and a rerun with
``--resume`` keeps every finished part. ``BATCHNLP_S3_RETRY_SECONDS=0`` turns the budget off.

Three mechanisms meet in one S3 request (s3fs 2026.9 on aiobotocore 3.10 / botocore 1.43):

- botocore's retry loop, per API call. We configure **standard** mode with
  :data:`TOTAL_MAX_ATTEMPTS` attempts; botocore registers its handler for it on each client under
  the id ``retry-config-s3``. When the budget is on, batchnlp's session has already registered the
  budget's handler under that id, so the client skips botocore's (a second registration of an id
  is ignored) and the budget decides every retry and every wait. Should that id ever change, the
  budget's handler still runs first and answers every attempt, ``False`` included, which
  aiobotocore takes as "do not retry" before any later handler's delay. The count then only
  applies when the budget is off: ``BATCHNLP_S3_RETRY_SECONDS=0``, or a user or environment
  retry setting (below).
- s3fs's ``_error_wrapper``, around each call: 5 tries (its ``retries`` class attribute, not a
  constructor option) of ``SlowDown`` answers with a body and connection-level errors, including a
  body cut off mid-read, which happens after botocore has returned and only this loop covers. It
  does not retry ``500 InternalError``, nor a bodyless ``503`` (a HEAD). The budget's streak lives
  in the task's context, so these rounds count against the same budget: once it is spent, each of
  s3fs's remaining rounds is a single attempt (about 2 s in all), not a fresh budget.
- The timeouts, which turn a stuck connection into a retryable fault.

The numbers:

- ``RETRY_SECONDS = 300``: a burst of 500s, or ``SlowDown`` while S3 scales a prefix up, lasts
  seconds to a minute. Hadoop's S3A connector retries throttling up to 20 times; 20 retries at our
  backoff wait about 0.5+1+2+4+8+15x10 = 166 s on average, and 300 s covers that with room. A
  fault that lasts longer is an outage, not throttling: failing the unit then (exit 1, rerun
  with ``--resume``) is better than every worker holding its part for longer.
- ``INTERACTIVE_RETRY_SECONDS = 30``: the budget of a command a person waits on at a terminal
  (``--dry-run``, ``plan``, ``inspect``, ``models digest``; :func:`interactive_budget`). Five
  minutes of silence there reads as a hang; 30 s rides out a burst of throttling or a store
  restarting and then says the store is failing. ``BATCHNLP_S3_RETRY_SECONDS`` still wins.
- ``MAX_BACKOFF = 20`` s: the cap of botocore's own standard mode. Once reached, a stuck request
  retries about every 10 s on average: a handful of requests a minute against a throttled prefix,
  and a recovered store is noticed within 20 s.
- ``TOTAL_MAX_ATTEMPTS = 8``, when the budget is off: seven retries wait up to
  1+2+4+8+16+20+20 = 71 s (about 35 s on average).
- ``CONNECT_TIMEOUT = 10`` s: a connection to S3 opens in milliseconds; 10 s leaves room for a
  congested NAT gateway or DNS, and anything slower is better retried on a fresh connection than
  waited for (botocore waits 60 s, s3fs 5 s).
- ``READ_TIMEOUT = 30`` s: the longest a socket may stay silent while an answer is awaited. S3
  sends the first byte of a GET, or answers the PutObject of a part (a few MB), within a second
  or two even under load, and closes its own side of a connection idle for about 20 s. A 30 s
  silence is a stuck connection, better retried than waited for (botocore waits 60 s); s3fs's
  15 s leaves less room for a slow but healthy answer, and a write retried after its answer
  timed out is sent twice (harmless for our idempotent parts, handled for create-only writes).

Every key the user sets wins: ``storage_options={"config_kwargs": {"read_timeout": 120,
"retries": {"max_attempts": 3}}}`` replaces just those values. ``AWS_RETRY_MODE`` and
``AWS_MAX_ATTEMPTS`` in the environment also win (the retry settings botocore documents), so an
operator can tune a deployment without a spec change. Any of these retry settings, or a
``session`` (or ``session_vars``, ``event_hooks``) storage option, is the user's retry policy: the
time budget stays off and botocore counts attempts as told. Chained URLs (``simplecache::s3://``)
get no policy: their options are nested per protocol.

``BATCHNLP_S3_RETRY_SECONDS`` and ``BATCHNLP_S3_RETRY_MAX_BACKOFF`` are read in the process that
creates the client and at each retry, so set them where the job runs (the job definition's
environment): Dask workers started by batchnlp inherit the driver's environment.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from batchnlp.errors import SpecError

S3_PROTOCOLS = ("s3", "s3a")
RETRY_MODE = "standard"
TOTAL_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 30
RETRY_SECONDS = 300.0
INTERACTIVE_RETRY_SECONDS = 30.0
MAX_BACKOFF = 20.0
RETRY_SECONDS_ENV = "BATCHNLP_S3_RETRY_SECONDS"
MAX_BACKOFF_ENV = "BATCHNLP_S3_RETRY_MAX_BACKOFF"

# What the budget retries. Status codes: throttling (429, S3's 503) and the server errors a retry
# can outlive; 501 (an unsupported feature) is permanent. Error codes: AWS's throttling codes and
# S3's timeouts, whatever status they come with.
RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
RETRIED_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
        "BandwidthLimitExceeded", "InternalError", "ServiceUnavailable", "RequestTimeout",
        "RequestTimeoutException", "PriorRequestNotComplete",
    }
)  # fmt: skip
# The id botocore registers its own retry handler under (``retry-config-<service>``).
RETRY_HANDLER_ID = "retry-config-s3"
# s3fs passes these storage options to the botocore session it creates: a user who sets one
# brings their own session, and with it their own retries.
SESSION_OPTIONS = ("session", "session_vars", "event_hooks", "include_builtin_handlers")

logger = logging.getLogger(__name__)


def s3_config() -> dict[str, Any]:
    """botocore ``Config`` keywords of the policy, less what the environment already decides."""
    retries: dict[str, Any] = {}
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = RETRY_MODE
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = TOTAL_MAX_ATTEMPTS
    return {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT, "retries": retries}


def storage_options_for(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for ``url`` with the retry policy under them; any key the user gave wins."""
    user_config = options.get("config_kwargs")
    if not _is_plain_s3(url):
        return dict(options)
    if user_config is None:
        user_config = {}
    elif not isinstance(user_config, Mapping):
        return dict(options)  # malformed: s3fs reports it as the user wrote it
    config = {**s3_config(), **user_config}
    user_retries = user_config.get("retries")
    if isinstance(user_retries, Mapping):
        retries = {**s3_config()["retries"], **user_retries}
        if "max_attempts" in user_retries and "total_max_attempts" not in user_retries:
            retries.pop("total_max_attempts", None)  # botocore prefers total_max_attempts: the user's must count
        config["retries"] = retries
    return {**options, "config_kwargs": config}


def filesystem_options(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What :meth:`Location.split` hands fsspec: :func:`storage_options_for`, plus the budget's session.

    The session exists once per process (and profile) and pickles as a reference to it, so a
    filesystem that travels to another process finds that process's own session there.
    """
    result = storage_options_for(url, options)
    if budget_applies(url, options):
        result["session"] = shared_session(options.get("profile"))
    return result


def budget_applies(url: str, options: Mapping[str, Any]) -> bool:
    """True when the time budget decides ``url``'s retries: S3, no user retry policy, budget not 0."""
    if not _is_plain_s3(url):
        return False
    max_backoff(strict=True)  # a malformed setting stops the job here, naming the variable
    if retry_seconds(strict=True) == 0:
        return False
    if "AWS_RETRY_MODE" in os.environ or "AWS_MAX_ATTEMPTS" in os.environ:
        return False
    if any(key in options for key in SESSION_OPTIONS):
        return False
    user_config = options.get("config_kwargs")
    if user_config is None:
        return True
    return isinstance(user_config, Mapping) and "retries" not in user_config


def retry_seconds(strict: bool = False) -> float:
    """The budget: ``BATCHNLP_S3_RETRY_SECONDS``, or :data:`RETRY_SECONDS` (:data:`INTERACTIVE_RETRY_SECONDS`
    inside :func:`interactive_budget`); 0 turns it off."""
    return _env_seconds(RETRY_SECONDS_ENV, _default_budget, strict)


_default_budget = RETRY_SECONDS


@contextmanager
def interactive_budget() -> Iterator[None]:
    """Within the block, this process's budget defaults to :data:`INTERACTIVE_RETRY_SECONDS`: a
    person is waiting. A process global, not a context variable: the retry handler runs on s3fs's
    event-loop thread, which no context of the caller's reaches."""
    global _default_budget
    saved, _default_budget = _default_budget, INTERACTIVE_RETRY_SECONDS
    try:
        yield
    finally:
        _default_budget = saved


def max_backoff(strict: bool = False) -> float:
    """The longest wait between two attempts: ``BATCHNLP_S3_RETRY_MAX_BACKOFF``, or :data:`MAX_BACKOFF`."""
    return _env_seconds(MAX_BACKOFF_ENV, MAX_BACKOFF, strict)


def _env_seconds(name: str, default: float, strict: bool) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value
    if strict:
        raise SpecError(f"{name}={raw!r}: expected a number of seconds, 0 or more")
    return default


def _is_plain_s3(url: str) -> bool:
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    return protocol in S3_PROTOCOLS and "::" not in url


# --- the budget's retry handler -------------------------------------------------------------

# (first fault's time.monotonic(), faults so far, given up) of the current streak of transient
# faults. Each asyncio task has its own context: s3fs runs every synchronous call in a task of
# its own and retries a call in the same task, so a streak covers one request and s3fs's rounds
# of it, and nothing else.
_streak: ContextVar[tuple[float, int, bool] | None] = ContextVar("batchnlp_s3_fault_streak", default=None)


def transient_fault(response: Any = None, caught_exception: BaseException | None = None) -> str | None:
    """A short description ("503 SlowDown", "ReadTimeoutError") of a fault worth retrying, else None."""
    if caught_exception is not None:
        from botocore.exceptions import ConnectionError, HTTPClientError

        if isinstance(caught_exception, ConnectionError | HTTPClientError):
            return type(caught_exception).__name__
        return None
    if response is None:
        return None
    http, parsed = response
    status = getattr(http, "status_code", None)
    error = parsed.get("Error") if isinstance(parsed, Mapping) else None
    code = error.get("Code") if isinstance(error, Mapping) else None
    if status in RETRIED_STATUS or code in RETRIED_CODES:
        return " ".join(dict.fromkeys(str(v) for v in (status, code) if v))
    return None


def needs_retry(
    response: Any = None, caught_exception: BaseException | None = None, operation: Any = None, **kwargs: Any
) -> float | bool:
    """botocore's ``needs-retry`` event: seconds to wait before the next attempt, or False to stop."""
    fault = transient_fault(response, caught_exception)
    if fault is None:
        _streak.set(None)  # a success or a permanent answer ends the streak
        return False
    now = time.monotonic()
    started, faults, gave_up = _streak.get() or (now, 0, False)
    faults += 1
    budget = retry_seconds()
    left = budget - (now - started)
    name = getattr(operation, "name", "request")
    if left <= 0:
        if not gave_up:
            logger.warning(
                "S3 answered %s to %s %d times in %.0f s, past the %.0f s retry budget (%s): giving up",
                fault, name, faults, now - started, budget, RETRY_SECONDS_ENV,
            )  # fmt: skip
        _streak.set((started, faults, True))
        return False
    _streak.set((started, faults, gave_up))
    if faults == 1:
        logger.info("S3 answered %s to %s: retrying for up to %.0f s", fault, name, budget)
    return min(random.uniform(0, min(max_backoff(), 2.0 ** min(faults - 1, 64))), left)


_sessions: dict[tuple[int, str | None], Any] = {}
_sessions_lock = threading.Lock()


def shared_session(profile: str | None = None) -> Any:
    """This process's botocore session for ``profile``, with the budget's handler registered."""
    key = (os.getpid(), profile)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = _session_class()(profile)
        return session


_session_cls: type | None = None


def _session_class() -> type:
    """The session class, built on first use so that local-only runs never import aiobotocore."""
    global _session_cls
    if _session_cls is None:
        from aiobotocore.session import AioSession

        class BudgetSession(AioSession):
            """An aiobotocore session whose clients retry S3 faults for the time budget."""

            def __init__(self, profile: str | None = None) -> None:
                super().__init__(profile=profile)
                self.batchnlp_profile = profile
                self.register("needs-retry.s3", needs_retry, unique_id=RETRY_HANDLER_ID)

            def __reduce__(self) -> tuple[Any, ...]:
                return shared_session, (self.batchnlp_profile,)

            def __repr__(self) -> str:  # stable: fsspec keys its filesystem cache on the options' text
                return f"batchnlp.util.retry.shared_session({self.batchnlp_profile!r})"

        _session_cls = BudgetSession
    return _session_cls
