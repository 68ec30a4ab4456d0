"""The output lock: one run writes an OUTPUT at a time.

Before a run touches anything under OUTPUT it creates ``_lock.json`` create-only (S3
``If-None-Match: *``, local ``O_EXCL``), naming its run id, host, process and start time, and
it removes the lock when it ends, committed or failed. While the run lives, a thread renews the
lock every ``RENEW_SECONDS``. A lock whose owner died (a killed driver, a reclaimed spot node)
is stale: on the same host as soon as its process is gone, from anywhere once it has not been
renewed for ``STALE_SECONDS``. A stale lock is broken with a warning, so an unattended retry
resumes by itself; a live one refuses the run with a message naming its owner; ``--break-lock``
breaks any lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

from batchnlp.errors import BatchnlpError, OutputError
from batchnlp.storage import Location, create_only, storage_errors, write_atomic

logger = logging.getLogger(__name__)

LOCK = "_lock.json"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0


class OutputLock:
    """``with OutputLock(output, run_id):`` holds OUTPUT for the block, or raises OutputError."""

    def __init__(self, output: Location, run_id: str, break_lock: bool = False, renew: float = RENEW_SECONDS) -> None:
        self.output, self.run_id, self.break_lock, self.renew = output, run_id, break_lock, renew
        self.fs, _ = output.split()
        self.path = output.child(LOCK)
        self.started_at = time.time()
        self.stop = threading.Event()
        self.renewer = threading.Thread(target=self._renew_until_stopped, name="batchnlp-lock", daemon=True)

    def __enter__(self) -> OutputLock:
        self.acquire()
        self.renewer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop.set()
        self.renewer.join()
        with storage_errors("delete", self.fs.unstrip_protocol(self.path)):
            holder = self.holder()
            if holder is not None and holder.get("run_id") == self.run_id:
                self.fs.rm(self.path)

    def acquire(self) -> None:
        for _ in range(3):  # a lock removed or broken between our create and our read: try again
            if create_only(self.fs, self.path, self._record()):
                return
            holder = self.holder()
            if holder is None:
                continue
            reason = "--break-lock" if self.break_lock else stale(holder)
            if reason is None:
                raise OutputError(
                    f"{self.output.display()} is being written by run {holder.get('run_id')} "
                    f"({holder.get('host')}, pid {holder.get('pid')}, started {_ago(holder.get('started_at'))}, "
                    f"last renewed {_ago(holder.get('renewed_at'))}); two runs on one output would mix their "
                    "parts. Wait for it to finish, or, if it is dead, rerun with --break-lock"
                )
            owner = holder.get("run_id")
            logger.warning("breaking the lock of run %s on %s (%s)", owner, self.output.display(), reason)
            self.fs.rm(self.path)
        raise OutputError(f"could not lock {self.output.display()}: other runs keep taking it; try again")

    def holder(self) -> dict[str, Any] | None:
        """The lock's record, or None when there is none (or it vanished while read)."""
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: nobody can be shown to hold it
            return {"run_id": "unknown", "renewed_at": 0}

    def _record(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "renewed_at": time.time(),
            }
        ).encode()

    def _renew_until_stopped(self) -> None:
        while not self.stop.wait(self.renew):
            try:
                holder = self.holder()
                if holder is None or holder.get("run_id") != self.run_id:
                    logger.warning("the lock on %s was broken by another run", self.output.display())
                    return
                write_atomic(self.fs, self.path, self._record())
            except (BatchnlpError, OSError) as e:
                # A thread's exception would print a traceback and end the renewals silently; the
                # run goes on, and the next renewal may succeed before the lock looks stale.
                logger.warning("could not renew the lock on %s: %s", self.output.display(), e)


def stale(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lock's owner is certainly gone, or None when it may be alive."""
    import psutil

    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and not psutil.pid_exists(int(holder.get("pid") or 0)):
        return f"its process {holder.get('pid')} on this host is gone"
    silent = now - float(holder.get("renewed_at") or 0)
    if silent > STALE_SECONDS:
        return f"not renewed for {silent:.0f} s"
    return None


def _ago(moment: Any) -> str:
    return f"{time.time() - float(moment):.0f} s ago" if moment else "at an unknown time"
