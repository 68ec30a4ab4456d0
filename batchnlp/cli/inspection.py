"""``batchnlp inspect``: what a run wrote, committed or interrupted, from its control files."""

from __future__ import annotations

from typing import Any

import click

from batchnlp.cli.options import storage_option
from batchnlp.cli.outcome import user_errors


@click.command("inspect")
@click.argument("output")
@click.option("--rows", type=click.IntRange(min=0), default=0, help="Also show the first N annotated rows.")
@storage_option("OUTPUT")
def inspect_output(output: str, rows: int, storage_option: Any) -> None:
    """Summarise the run at OUTPUT (committed or interrupted) from its manifest or progress records.

    \b
    Examples:
      batchnlp inspect s3://lake/labelled/2026-11-24
      batchnlp inspect out/ --rows 5
    """
    with user_errors(False, interactive=True):
        from batchnlp.observe import inspection

        options = dict(storage_option)
        info = inspection.load(output, options)
        click.echo(inspection.summary(info))
        if rows:
            found = inspection.first_rows(output, info, rows, options)
    if rows:
        from rich.console import Console

        console = Console()
        console.print(inspection.rows_table(info, found, console.width))
