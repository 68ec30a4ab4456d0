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


class JobFailed(BatchnlpError):
    """A unit failed for a reason that is not the user's input: retrying may help."""

    exit_code = 1
