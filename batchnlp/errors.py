"""The error tree: every failure a user can act on is a ``BatchnlpError``.

Each class carries the process exit code the CLI uses, so a job scheduler's retry rule can
tell a user error (fix the input or the flags, do not retry) from a transient one (retry).
"""

from __future__ import annotations


class BatchnlpError(Exception):
    """Base class: a message meant for the person who ran the job."""

    exit_code = 1


class SpecError(BatchnlpError):
    """The flags or the job spec are wrong; nothing was run."""

    exit_code = 2


class InputError(BatchnlpError):
    """The input is missing or malformed; the message names the file, line or column."""

    exit_code = 2


class ModelError(BatchnlpError):
    """A model ref cannot be found, fetched or loaded safely."""

    exit_code = 2


class OutputError(BatchnlpError):
    """The output location refuses the job (finished already, missing bucket, no access)."""

    exit_code = 2


class CacheError(BatchnlpError):
    """A label cache refuses the request: the location is not a cache, its log is damaged or of a
    newer format, or a stored value does not fit the run's settings. The message names the file and
    what to do; retrying the same command cannot help."""

    exit_code = 2


class JobFailed(BatchnlpError):
    """A unit failed for a reason that is not the user's input: retrying may help."""

    exit_code = 1


class TooManyBadLines(InputError):
    """More input lines were bad than ``--max-bad-lines`` allows: nothing was committed.

    Its own code, so a scheduler's rules can tell "the data is too dirty tonight" (do not retry;
    alert) from a wrong spec; the parts already written are kept for ``--resume``.
    """

    exit_code = 3


class RunOwnedElsewhere(OutputError):
    """Another live job runs this same job spec on the output (a schedule delivered twice).

    Exits 0: this job writes nothing and the other one does the night's work, so neither fails.
    """

    exit_code = 0


class Interrupted(BaseException):
    """A SIGTERM or SIGINT stopped the run after draining it: finished parts are recorded, the lock released.

    128 + the signal's number, as a shell reports a process killed by it; retry rules retry it
    and the next attempt resumes. Like ``KeyboardInterrupt`` it is not an ``Exception``: a signal
    handler raises it wherever the main thread is, and an ``except Exception`` there (logging's
    own ``emit`` is one) would otherwise swallow it and let the run go on.
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number
