"""How a command ends: its outcome as plain lines or JSON log lines, and errors as exit codes.

A :class:`~batchnlp.errors.BatchnlpError` carries its exit code and a message saying what to
do: the command prints the message and exits with the code. Anything else is a bug, said so.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import click

from batchnlp.errors import BatchnlpError, Interrupted
from batchnlp.util.redaction import redact_text

if TYPE_CHECKING:
    from batchnlp.cli.options import LogChoice


def report_summary(summary: Any, log: LogChoice) -> None:
    """A finished run's lines (:func:`batchnlp.observe.summary.summary_lines`), unless quiet."""
    from batchnlp.observe.summary import summary_lines

    if not log.quiet:
        for line in summary_lines(summary):
            say(line, log.json, "summary", run_id=summary.run_id)


def say(message: str, json_logs: bool, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A command's outcome: a plain line (stdout, or stderr for an error), or with --log-format json
    a JSON log line like every other (containers send both streams to one log)."""
    if json_logs:
        from batchnlp.observe.logs import emit

        emit(redact_text(message), event, level, **fields)
    else:
        click.echo(redact_text(message), err=level >= logging.WARNING)


@contextmanager
def user_errors(verbose: bool, json_logs: bool = False, interactive: bool = False) -> Iterator[None]:
    """A BatchnlpError or an Interrupted run ends the command with its message and exit code, as
    does a storage failure (:func:`batchnlp.io.storage.unnamed_storage_error`); anything else is a bug.
    ``interactive``: a person waits, so S3 faults are retried for 30 s, not 5 minutes
    (:func:`batchnlp.util.retry.interactive_budget`)."""
    from batchnlp.io.storage import unnamed_storage_error
    from batchnlp.util.retry import interactive_budget

    try:
        with interactive_budget() if interactive else nullcontext():
            yield
    except (BatchnlpError, Interrupted) as e:
        fail(str(e), e.exit_code, json_logs)
    except Exception as e:
        failure = unnamed_storage_error(e)
        if failure is not None:
            fail(str(failure), failure.exit_code, json_logs)
        if verbose:
            raise
        fail(
            f"unexpected {type(e).__name__}: {e}\n(this is a bug in batchnlp; rerun with --verbose for the traceback)",
            1,
            json_logs,
        )


def fail(message: str, code: int, json_logs: bool = False) -> None:
    """End the command: an error, or with code 0 (another job owns the run) a notice on stdout."""
    text = message if code == 0 or json_logs else f"error: {message}"
    event, level = ("failed", logging.ERROR) if code else ("owned_elsewhere", logging.INFO)
    say(text, json_logs, event, level, exit_code=code)
    sys.exit(code)
