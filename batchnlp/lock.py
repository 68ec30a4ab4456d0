"""The output lock: one run writes an OUTPUT at a time, and a scheduler's next attempt takes over at once.

Before a run touches anything under OUTPUT it creates ``_lock.json`` create-only (S3
``If-None-Match: *``, local ``O_EXCL``), naming its run id, host, process, start time, the job
it belongs to in its scheduler's terms (:class:`Owner`: an AWS Batch job id and attempt, a
Kubernetes Job's uid and pod, or ``--lock-owner``) and the spec's fingerprint. It removes the
lock when it ends, committed, failed or stopped. While the run lives, a thread renews the lock
every ``RENEW_SECONDS``.

Who may take a lock that is there already:

- **A later attempt of the same job, at once.** AWS Batch and Kubernetes run one attempt of a
  job at a time: when attempt 2 starts (often on another host, seconds after Spot reclaimed the
  first), attempt 1 is gone, whatever its last renewal says.
- **Anyone, once the owner is certainly dead**: on the same host as soon as its process is gone,
  from anywhere once the lock has not been renewed for ``STALE_SECONDS``; or with ``--break-lock``.
- **Nobody else.** A live owner from another job refuses the run (exit 2). When both are
  scheduled jobs (this run has an owner) running the same spec, a schedule delivered twice, the
  refusal is :class:`RunOwnedElsewhere`, which exits 0: the other job does the night's work,
  and neither night fails.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from batchnlp.errors import BatchnlpError, OutputError, RunOwnedElsewhere
from batchnlp.storage import Location, create_only, storage_errors, write_atomic

logger = logging.getLogger(__name__)

LOCK = "_lock.json"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0


@dataclass(frozen=True)
class Owner:
    """The job a run belongs to, as its scheduler names it; ``attempt`` tells its attempts apart."""

    scheduler: str  # "aws-batch", "kubernetes" or "user" (--lock-owner)
    job: str
    attempt: str = ""

    def describe(self) -> str:
        if self.scheduler == "aws-batch":
            return f"attempt {self.attempt} of AWS Batch job {self.job}"
        if self.scheduler == "kubernetes":
            return f"pod {self.attempt} of Kubernetes Job {self.job}"
        return f"job {self.job}"

    def succeeds(self, other: Owner) -> bool:
        """This is a later attempt of ``other``'s job, which its scheduler only starts once ``other`` is gone."""
        return (other.scheduler, other.job) == (self.scheduler, self.job) and other != self

    @classmethod
    def from_record(cls, record: Any) -> Owner | None:
        if not isinstance(record, Mapping):
            return None
        try:
            return cls(str(record["scheduler"]), str(record["job"]), str(record.get("attempt", "")))
        except KeyError:
            return None


def owner_from(environ: Mapping[str, str], lock_owner: str | None = None) -> Owner | None:
    """This run's owner: ``--lock-owner``, else what AWS Batch or the Kubernetes pod spec set, else None.

    AWS Batch sets ``AWS_BATCH_JOB_ID`` (an array child's ends in ``:INDEX``) and
    ``AWS_BATCH_JOB_ATTEMPT`` in every container; Kubernetes has no such variables, so
    ``infra/k8s/cronjob.yaml`` passes the Job's uid and the pod's name through the downward API.
    A user-named owner (an Airflow task instance, say) has no attempts: a later run with the
    same name takes over, so the name must be unique to one scheduled run.
    """
    if lock_owner:
        return Owner("user", lock_owner, str(os.getpid()))
    if environ.get("AWS_BATCH_JOB_ID"):
        return Owner("aws-batch", environ["AWS_BATCH_JOB_ID"], environ.get("AWS_BATCH_JOB_ATTEMPT", ""))
    if environ.get("BATCHNLP_K8S_JOB_UID"):
        return Owner("kubernetes", environ["BATCHNLP_K8S_JOB_UID"], environ.get("BATCHNLP_K8S_POD", ""))
    return None


class OutputLock:
    """``with OutputLock(output, run_id):`` holds OUTPUT for the block, or raises OutputError."""

    def __init__(
        self,
        output: Location,
        run_id: str,
        break_lock: bool = False,
        renew: float = RENEW_SECONDS,
        owner: Owner | None = None,
        fingerprint: str = "",
        name: str = LOCK,
    ) -> None:
        self.output, self.run_id, self.break_lock, self.renew = output, run_id, break_lock, renew
        self.owner, self.fingerprint = owner, fingerprint  # fingerprint: the spec's, to recognise a duplicate job
        self.fs, _ = output.split()
        self.path = output.child(name)  # a sharded run's shards each hold their own (batchnlp.shards.shard_lock)
        self.started_at = time.time()
        self.stop = threading.Event()
        self.renewer = threading.Thread(target=self._renew_until_stopped, name="batchnlp-lock", daemon=True)

    def __enter__(self) -> OutputLock:
        try:
            self.acquire()
            self.renewer.start()
        except BaseException:  # a SIGTERM's Interrupted after the lock was created: __exit__ would not run
            self.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Stop renewing and delete the lock if this run holds it (another run's is left alone)."""
        self.stop.set()
        if self.renewer.ident is not None:
            self.renewer.join()
        with storage_errors("delete", self.fs.unstrip_protocol(self.path)):
            holder = self.holder()
            if holder is not None and self._ours(holder):
                self.fs.rm(self.path)

    def _ours(self, holder: dict[str, Any]) -> bool:
        """Whether ``holder`` is this very lock: a duplicate job of the same run id holds its own."""
        return all(holder.get(key) == value for key, value in self._identity().items())

    def _identity(self) -> dict[str, Any]:
        """The fields of the lock's record that name this very lock."""
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "started_at": self.started_at}

    def acquire(self) -> None:
        for _ in range(3):  # a lock removed or broken between our create and our read: try again
            if create_only(self.fs, self.path, self._record()):
                return
            holder = self.holder()
            if holder is None:
                continue
            reason = self._may_take(holder)
            run = holder.get("run_id")
            logger.warning("breaking the lock of run %s on %s (%s)", run, self.output.display(), reason)
            self.fs.rm(self.path)
        raise OutputError(f"could not lock {self.output.display()}: other runs keep taking it; try again")

    def _may_take(self, holder: dict[str, Any]) -> str:
        """Why this run may break ``holder``'s lock; raises when it may not."""
        previous = Owner.from_record(holder.get("owner"))
        if self.break_lock:
            return "--break-lock"
        if self.owner is not None and previous is not None and self.owner.succeeds(previous):
            return f"{self.owner.describe()} takes over from {previous.describe()}: its scheduler runs one at a time"
        reason = stale(holder)
        if reason is not None:
            return reason
        who = (
            f"run {holder.get('run_id')} ({previous.describe() + ', ' if previous else ''}{holder.get('host')}, "
            f"pid {holder.get('pid')}, started {_ago(holder.get('started_at'))}, "
            f"last renewed {_ago(holder.get('renewed_at'))})"
        )
        if self.owner is not None and self.fingerprint and holder.get("spec_fingerprint") == self.fingerprint:
            raise RunOwnedElsewhere(
                f"{self.output.display()} is being written by {who} for this same job spec (a duplicate "
                "submission or schedule delivery?); this run leaves it to that one and writes nothing"
            )
        raise OutputError(
            f"{self.output.display()} is being written by {who}; two runs on one output would mix their "
            "parts. Wait for it to finish, or, if it is dead, rerun with --break-lock"
        )

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
                **self._identity(),
                "renewed_at": time.time(),
                "owner": asdict(self.owner) if self.owner else None,
                "spec_fingerprint": self.fingerprint,
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
