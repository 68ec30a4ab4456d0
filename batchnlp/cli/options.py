"""The options several commands share, each declared once.

``run``, ``commit`` and ``distill`` log alike (:data:`LOG_OPTIONS`); every command that reaches
storage takes ``--storage-option`` (:func:`storage_option`); the job's own settings as flags are
:mod:`.job_options`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from batchnlp.cli.params import KeyValue
from batchnlp.observe.logs import configure_logging
from batchnlp.spec import RUN_ID_RULE, valid_run_id

# Spec placeholders, set the same way by `run` and by `submit` (which passes them on to `run`).
PARAM_OPTION = click.option(
    "--param",
    multiple=True,
    type=KeyValue("NAME", typed=False),
    metavar="NAME=VALUE",
    help="Value of ${NAME} in the job spec (see also --run-date). Example: --param table=tickets",
)
RUN_DATE_OPTION = click.option(
    "--run-date",
    metavar="DATE",
    help="The date the run is for, ${run_date} in the spec (${yesterday} is the day before): a date, an ISO "
    "timestamp or 'today' (the default, UTC; submit fixes it at submission). Example: --run-date 2026-11-24",
)


def storage_option(what: str) -> Callable[[Any], Any]:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for ``what``."""
    return click.option(
        "--storage-option",
        multiple=True,
        type=KeyValue(),
        metavar="KEY=VALUE",
        help=f"fsspec option for {what}. Example: --storage-option anon=true",
    )


def catalog_option(more: str = "") -> Callable[[Any], Any]:
    """``--catalog-option KEY=VALUE`` (repeatable): an Iceberg catalog property."""
    return click.option(
        "--catalog-option",
        multiple=True,
        type=KeyValue(typed=False),
        metavar="KEY=VALUE",
        help="Iceberg catalog property" + (f", {more}" if more else "."),
    )


def run_id_option(help_text: str, required: bool = False) -> Callable[[Any], Any]:
    """``--run-id ID``, checked as it is parsed: it names a folder, so it is checked before any job spec is."""
    return click.option("--run-id", required=required, metavar="ID", callback=_run_id, help=help_text)


def _run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not valid_run_id(value):
        raise click.BadParameter(f"must be {RUN_ID_RULE}, got {value!r}", param_hint="--run-id")
    return value


# How a command logs: run, commit and distill alike.
LOG_OPTIONS = [
    click.option("-v", "--verbose", is_flag=True, help="Debug logging (credentials stay masked)."),
    click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress, no summary."),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines on stderr: text, or one JSON object per line (time, level, logger, event, run_id, unit, "
        "counts) for CloudWatch and other log stores; json also replaces the progress bar with progress events. "
        "Example: --log-format json",
    ),
]


@dataclass(frozen=True, kw_only=True)
class LogChoice:
    """How a command logs, from ``-v``, ``-q`` and ``--log-format``."""

    verbose: bool
    quiet: bool
    format: str

    @property
    def json(self) -> bool:
        return self.format == "json"

    def configure(self, default: int = logging.INFO) -> None:
        """Set up logging: DEBUG with -v, only errors with -q, else ``default``."""
        level = logging.DEBUG if self.verbose else logging.ERROR if self.quiet else default
        configure_logging(level, self.format)


def logged(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` given its log options as one ``log: LogChoice``."""

    @functools.wraps(command)
    def with_log(*args: Any, verbose: bool, quiet: bool, log_format: str, **kwargs: Any) -> Any:
        return command(*args, log=LogChoice(verbose=verbose, quiet=quiet, format=log_format), **kwargs)

    return with_log


def log_options(command: Any) -> Any:
    """Decorate ``command`` with :data:`LOG_OPTIONS` (``-v``, ``-q``, ``--log-format``), which it
    receives as one ``log`` (:class:`LogChoice`)."""
    return with_options(LOG_OPTIONS, logged(command))


def with_options(options: list[Any], command: Any) -> Any:
    """Decorate ``command`` with ``options``, in the order ``--help`` lists them."""
    for option in reversed(options):
        command = option(command)
    return command
