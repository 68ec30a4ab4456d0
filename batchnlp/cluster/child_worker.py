"""A Dask preload for the workers of a multi-node job's child nodes: the job's end reads as one.

The main node closes its scheduler when the job is over. A child worker whose heartbeat is on
the wire at that moment gets ``CommClosedError``, and distributed logs it as
``distributed.worker - ERROR - Failed to communicate with scheduler during heartbeat`` with a
traceback, before the scheduler's close message reaches it (about one two-node job in ten on
loopback, more under load). In CloudWatch a good night would look like a failed one. The record
stays, as a one-line warning: mid-job, a lost scheduler also ends in the worker closing after
its death timeout, which distributed reports on its own.
"""

from __future__ import annotations

import logging
from typing import Any

HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


class HeartbeatLostAsWarning(logging.Filter):
    """Turns distributed's failed-heartbeat error into a warning without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(HEARTBEAT_FAILED):
            error = record.exc_info[1] if record.exc_info else None
            record.msg = f"{HEARTBEAT_FAILED} ({type(error).__name__ if error else 'no answer'}); "
            record.msg += "once at the end of a job this is the main node closing its scheduler"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def dask_setup(worker: Any = None) -> None:
    """Dask preload hook, run in each child worker process before it joins the scheduler."""
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, HeartbeatLostAsWarning) for f in worker_log.filters):
        worker_log.addFilter(HeartbeatLostAsWarning())
