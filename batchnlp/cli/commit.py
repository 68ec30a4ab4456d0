"""``batchnlp commit``: the one commit of a sharded run, once every shard's parts are there."""

from __future__ import annotations

from typing import Any

import click

from batchnlp.cli.job_options import SpecSource, sourced
from batchnlp.cli.options import (
    PARAM_OPTION,
    RUN_DATE_OPTION,
    LogChoice,
    catalog_option,
    log_options,
    run_id_option,
    storage_option,
)
from batchnlp.cli.outcome import report_summary, user_errors
from batchnlp.observe.metrics import job_metrics
from batchnlp.spec import OUTPUT_FORMATS


@click.command("commit")
@click.argument("output", required=False)
@run_id_option("The sharded run to commit. Example: --run-id 2026-11-24", required=True)
@click.option("--spec", "spec_file", help="The shards' job spec (its output, format and catalog); instead of OUTPUT.")
@PARAM_OPTION
@RUN_DATE_OPTION
@click.option(
    "--output-format",
    type=click.Choice(OUTPUT_FORMATS),
    help="delta or iceberg for a table. Default: "
    "part files, or a Delta table when OUTPUT holds the run's staging directory.",
)
@click.option("--catalog", metavar="NAME", help="Iceberg: the catalog holding OUTPUT (namespace.table).")
@catalog_option()
@storage_option("OUTPUT")
@click.option("--break-lock", is_flag=True, default=None, help="Take OUTPUT although another commit's lock is there.")
@log_options
@sourced
def commit(source: SpecSource, log: LogChoice, **flags: Any) -> None:
    """Commit a sharded run: once every unit of its plan has its part, intact, write _manifest.json and
    _SUCCESS, or make the one Delta/Iceberg commit. The finalize step of `batchnlp submit --shards N`.

    Exit codes: 0 committed (now or before); 1 units are missing or damaged (the message names them
    and their shards: rerun those, then commit again); 2 no such run, or a usage or output error.

    \b
    Examples:
      batchnlp commit s3://lake/labelled/2026-11-24 --run-id 2026-11-24
      batchnlp commit s3://lake/tables/labels --output-format delta --run-id 2026-11-24
      batchnlp commit --spec jobs/nightly-labels.yaml --run-date 2026-11-24 --run-id 2026-11-24
    """
    log.configure()
    import batchnlp

    outcome: dict[str, Any] = {}
    with job_metrics(log.json, outcome):  # its line last, as `run` ends
        with user_errors(log.verbose, log.json):
            if source.file:
                summary = batchnlp.commit(run_id=flags["run_id"], spec=source.spec(flags))
            else:
                summary = batchnlp.commit(
                    flags["output"],
                    run_id=flags["run_id"],
                    output_format=flags["output_format"],
                    catalog=flags["catalog"],
                    catalog_options=dict(flags["catalog_option"]),
                    storage_options=dict(flags["storage_option"]),
                    break_lock=flags["break_lock"],
                )
            outcome["summary"] = summary
        report_summary(summary, log)
