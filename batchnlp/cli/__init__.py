"""The ``batchnlp`` command: one module per command, each parsing its flags, calling one
function of the Python API (:mod:`batchnlp.api`) and printing the outcome.

A command's module is imported only when that command runs (or ``--help`` lists them): ``batchnlp
run`` never loads the submit client's code. Options several commands share are declared once in
:mod:`.options`; how a command ends (lines, JSON logs, exit codes) is :mod:`.outcome`.

May import: everything (the CLI is the top layer); nothing imports it but ``python -m batchnlp``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import click

from batchnlp.version import __version__

# Command name → "module:attribute" of its click command, loaded on first use.
COMMANDS = {
    "run": "batchnlp.cli.run:run",
    "plan": "batchnlp.cli.plan:plan_command",
    "commit": "batchnlp.cli.commit:commit",
    "submit": "batchnlp.cli.submit:submit",
    "status": "batchnlp.cli.submit:status",
    "inspect": "batchnlp.cli.inspection:inspect_output",
    "distill": "batchnlp.cli.distill:distill_command",
    "models": "batchnlp.cli.models:models",
    "cache": "batchnlp.cli.cache:cache",
}


class LazyCommands(Mapping[str, click.Command]):
    """The commands by name, each imported from :data:`COMMANDS` the first time it is looked up."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        self.targets = targets
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            module, _, attribute = self.targets[name].partition(":")
            self.loaded[name] = getattr(importlib.import_module(module), attribute)
        return self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)


class Commands(click.Group):
    """The command group: commands load lazily (:class:`LazyCommands`); with ``--log-format json``
    a usage error is a JSON line too (click would print it as text before the command could choose
    the log format)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(COMMANDS)  # type: ignore[assignment]

    def main(self, args: Any = None, *rest: Any, **options: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        wants_json = any(
            a == "--log-format=json" or (a, b) == ("--log-format", "json")
            for a, b in zip(argv, [*argv[1:], ""], strict=True)
        )
        if not wants_json or options.get("standalone_mode") is False:
            return super().main(args, *rest, **options)
        try:
            code = super().main(argv, *rest, **{**options, "standalone_mode": False})
        except click.ClickException as e:
            from batchnlp.cli.outcome import fail
            from batchnlp.observe.logs import configure_logging

            configure_logging(logging.ERROR, "json")
            fail(e.format_message(), e.exit_code, json_logs=True)
        sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode ends


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchnlp")
def main() -> None:
    """Label JSONL, Parquet, Delta and Iceberg data with DistilBERT-class models on a Dask cluster;
    write Parquet, Arrow IPC, JSONL or a Delta/Iceberg table, committed exactly once."""
