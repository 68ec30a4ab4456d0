"""The options several commands share, each declared once.

``run``, ``commit`` and ``distill`` log alike (:data:`LOG_OPTIONS`); every command that reaches
storage takes ``--storage-option`` (:func:`storage_option`); the job's own settings as flags are
:mod:`.job_options`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from batchnlp.cli.params import KeyValue
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


def log_options(command: Any) -> Any:
    """Decorate ``command`` with :data:`LOG_OPTIONS` (``-v``, ``-q``, ``--log-format``)."""
    return with_options(LOG_OPTIONS, command)


def log_level(verbose: bool, quiet: bool, default: int = logging.INFO) -> int:
    """The level :data:`LOG_OPTIONS` ask for: DEBUG with -v, only errors with -q."""
    return logging.DEBUG if verbose else logging.ERROR if quiet else default


def with_options(options: list[Any], command: Any) -> Any:
    """Decorate ``command`` with ``options``, in the order ``--help`` lists them."""
    for option in reversed(options):
        command = option(command)
    return command
