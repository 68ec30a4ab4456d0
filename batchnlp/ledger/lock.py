"""The output lock: one run writes an OUTPUT at a time, and a scheduler's next attempt takes over at once.

Before a run touches anything under OUTPUT it creates ``_lock.json`` create-only, naming its run
id, host, process, start time, the job it belongs to in its scheduler's terms (:class:`Owner`: an
AWS Batch job id and attempt, a Kubernetes Job's uid and pod, or ``--lock-owner``) and the spec's
fingerprint. It removes the lock when it ends, committed, failed or stopped. While the run lives,
a thread renews the lock every ``RENEW_SECONDS``.

No two drivers can hold it, because nothing here reads then writes: every change to the lock is
a compare-and-swap on the version this driver last saw (:mod:`batchnlp.ledger.lease_store`: S3
``If-None-Match: *`` / ``If-Match: <ETag>``, a ``flock``-guarded compare and ``os.replace`` on
local disk). Two drivers breaking one stale lock both ask to replace the same version: one wins,
the other finds a live lock and is refused. A renewal replaces the version the holder wrote last;
when that fails, someone took the lock, and the holder has lost it for good.

Age is the store's: the time since the lock object was last written, by the store's clock (S3's
``LastModified`` against the ``Date`` of the same answer; a local file's mtime), so a holder whose
clock runs fast or slow looks neither dead nor immortal. The ``renewed_at`` a record carries is
the holder's clock, shown to people and never used to decide.

A run commits only while it holds the lock (:meth:`OutputLock.check_held`): it renews once more
and refuses (exit 1, which the scheduler retries) when its lock was taken, or when its renewals
failed for longer than ``STALE_SECONDS``, since another driver may then rightly have taken it,
written, and released it. The holder times its own renewals with its monotonic clock, from the
moment each successful write was sent: the store stamped that write no earlier, so the lock
looks fresh to others for at least as long as it does to its holder.

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
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from batchnlp.errors import BatchnlpError, JobFailed, OutputError, RunOwnedElsewhere
from batchnlp.io.storage import Location
from batchnlp.ledger.lease_store import LeaseStore, Version

logger = logging.getLogger(__name__)

LOCK = "_lock.json"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0


@dataclass(frozen=True, kw_only=True)
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
            return cls(
                scheduler=str(record["scheduler"]), job=str(record["job"]), attempt=str(record.get("attempt", ""))
            )
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
        return Owner(scheduler="user", job=lock_owner, attempt=str(os.getpid()))
    if environ.get("AWS_BATCH_JOB_ID"):
        return Owner(
            scheduler="aws-batch", job=environ["AWS_BATCH_JOB_ID"], attempt=environ.get("AWS_BATCH_JOB_ATTEMPT", "")
        )
    if environ.get("BATCHNLP_K8S_JOB_UID"):
        return Owner(
            scheduler="kubernetes", job=environ["BATCHNLP_K8S_JOB_UID"], attempt=environ.get("BATCHNLP_K8S_POD", "")
        )
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
        stale_after: float = STALE_SECONDS,
    ) -> None:
        self.output, self.run_id, self.break_lock, self.renew = output, run_id, break_lock, renew
        self.owner, self.fingerprint = owner, fingerprint  # fingerprint: the spec's, to recognise a duplicate job
        self.stale_after = stale_after
        fs, _ = output.split()
        self.store = LeaseStore(fs, output.child(name))  # a sharded run's shards each hold their own (shard_lock)
        self.started_at = time.time()
        self.etag: str | None = None  # the version this run wrote last; None: not held
        self.renewed = 0.0  # time.monotonic() when the last successful write was sent
        self.lost: str | None = None  # why the lock is no longer this run's
        self.writing = threading.Lock()  # the renewer and check_held each replace self.etag
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
        """Stop renewing and delete the lock if this run still holds it (a taker's is left alone)."""
        self.stop.set()
        if self.renewer.ident is not None:
            self.renewer.join()
        with self.writing:
            if self.etag is not None and self.lost is None:
                self.store.delete(self.etag)
            self.etag = None

    def acquire(self) -> None:
        for _ in range(3):  # a lock removed, renewed or taken between our read and our write: look again
            sent = time.monotonic()
            etag = self.store.create(self._body())
            if etag is None:
                found = self.store.read()
                if found is None:
                    continue
                reason = self._may_take(found)
                run = lock_record(found).get("run_id", "unknown")
                logger.warning("breaking the lock of run %s on %s (%s)", run, self.output.display(), reason)
                sent = time.monotonic()
                etag = self.store.replace(self._body(), found.etag)
            if etag is not None:
                self.etag, self.renewed = etag, sent
                return
        raise OutputError(f"could not lock {self.output.display()}: other runs keep taking it; try again")

    def _may_take(self, found: Version) -> str:
        """Why this run may break the lock ``found``; raises when it may not."""
        holder = lock_record(found)
        previous = Owner.from_record(holder.get("owner"))
        if self.break_lock:
            return "--break-lock"
        if self.owner is not None and previous is not None and self.owner.succeeds(previous):
            return f"{self.owner.describe()} takes over from {previous.describe()}: its scheduler runs one at a time"
        reason = stale(found, self.stale_after)
        if reason is not None:
            return reason
        who = (
            f"run {holder.get('run_id')} ({previous.describe() + ', ' if previous else ''}{holder.get('host')}, "
            f"pid {holder.get('pid')}, last renewed {found.age:.0f} s ago)"
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

    def check_held(self) -> None:
        """Before a commit: renew now, or raise JobFailed (exit 1) when this run may no longer hold the lock.

        Refused when the lock was taken, or when no renewal succeeded for ``stale_after`` seconds:
        others could then have taken the lock, written under OUTPUT and released it, and a commit
        now would seal their parts and ours together. The scheduler's next attempt resumes.
        """
        with self.writing:
            if self.lost is None:
                self._renew()
        if self.lost is not None:
            raise JobFailed(
                f"run {self.run_id} lost its lock on {self.output.display()}: {self.lost}. It commits nothing; "
                "run it again (--resume keeps the finished parts; the scheduler retries exit 1)"
            )

    def _renew(self) -> None:
        """Replace the version this run wrote last (call with ``self.writing`` held); a refusal is a loss.

        So is a lapse: once no renewal succeeded for ``stale_after``, others may have taken the lock,
        written and released it, so a later renewal that succeeds proves nothing.
        """
        sent = time.monotonic()
        silent = sent - self.renewed
        if silent > self.stale_after:
            self.lost = (
                f"no renewal succeeded for {silent:.0f} s, past the {self.stale_after:.0f} s after which "
                "another run may take it"
            )
            logger.warning("the lock on %s lapsed: %s", self.output.display(), self.lost)
            return
        etag = self.store.replace(self._body(), self.etag or "")
        if etag is None:
            found = self.store.read()
            taker = f"run {lock_record(found).get('run_id')}" if found is not None else "someone, who then removed it"
            self.lost = f"{taker} took it"
            logger.warning("the lock on %s was taken by %s", self.output.display(), taker)
            return
        self.etag, self.renewed = etag, sent

    def _body(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "renewed_at": time.time(),  # the holder's clock: for people, never for deciding
                "owner": asdict(self.owner) if self.owner else None,
                "spec_fingerprint": self.fingerprint,
                "nonce": uuid.uuid4().hex,  # every write a new version, so none can come back
            }
        ).encode()

    def _renew_until_stopped(self) -> None:
        while not self.stop.wait(self.renew):
            with self.writing:
                if self.lost is not None or self.etag is None:
                    return
                try:
                    self._renew()
                except (BatchnlpError, OSError) as e:
                    # A thread's exception would print a traceback and end the renewals silently;
                    # the next renewal may succeed, and check_held refuses a commit if none does.
                    logger.warning("could not renew the lock on %s: %s", self.output.display(), e)


def stale(found: Version, stale_after: float = STALE_SECONDS) -> str | None:
    """Why the lock ``found``'s owner is certainly gone, or None when it may be alive."""
    import psutil

    holder = lock_record(found)
    if not holder:
        return "its record is unreadable"
    if holder.get("host") == socket.gethostname() and not psutil.pid_exists(int(holder.get("pid") or 0)):
        return f"its process {holder.get('pid')} on this host is gone"
    if found.age > stale_after:
        return f"not renewed for {found.age:.0f} s by the store's clock"
    return None


def read_lock(output: Location, name: str = LOCK) -> Version | None:
    """The lock at ``output``, as its store has it (for ``batchnlp inspect``)."""
    fs, _ = output.split()
    return LeaseStore(fs, output.child(name)).read()


def live_holder(found: Version | None) -> str | None:
    """The run id of the lock's owner while it may be alive; None when there is no lock or it is stale."""
    return None if found is None or stale(found) is not None else lock_record(found).get("run_id")


def lock_record(found: Version) -> dict[str, Any]:
    """The lock's record; an empty one when it is torn or foreign (nobody can be shown to hold it)."""
    try:
        record = json.loads(found.data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
