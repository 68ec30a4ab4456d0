"""``batchnlp plan``: what ``batchnlp run`` with the same arguments would cost, writing nothing."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from batchnlp.cli.job_options import SpecSource, job_options
from batchnlp.cli.options import LogChoice
from batchnlp.cli.outcome import user_errors
from batchnlp.util.redaction import redact_text

PLAN_EXAMPLES = """
\b
Examples:
  batchnlp plan 'data/*.jsonl' out/ --task sentiment --shards 8 --gpu-hour-price 3.50
  batchnlp plan --spec jobs/nightly-labels.yaml --run-date 2026-11-25 --json
  batchnlp plan contracts.parquet out/ --task qa --question-column question --device cuda
"""


@click.command("plan", epilog=PLAN_EXAMPLES)
@click.argument("input", required=False)
@click.argument("output", required=False)
@job_options
@click.option(
    "--tokens-per-second",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="Throughput of one shard. Default: the measured figure (docs/performance.md) for the device and precision "
    "(DistilBERT-base; bigger models slower by parameter count). Example: --tokens-per-second 900000",
)
@click.option(
    "--gpu-hour-price",
    type=click.FloatRange(min=0),
    metavar="USD",
    help="Price of one machine (GPU) hour, to show the cost. Default: no cost shown. Example: --gpu-hour-price 3.50",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Show wall time and cost for 1 up to N shards. Example: --shards 16",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the same figures) instead of a table.")
def plan_command(
    source: SpecSource,
    log: LogChoice,
    tokens_per_second: float | None,
    gpu_hour_price: float | None,
    shards: int,
    as_json: bool,
    **flags: Any,
) -> None:
    """Print what `batchnlp run` with the same arguments would cost, writing nothing.

    Files, bytes and rows (Parquet: exact from footers; JSONL: sampled, with a 95% interval),
    the units run would cut, tokens and padding counted with each task's real tokenizer on a
    sample of rows, and wall time, machine-hours and cost for 1 to N shards. Exit codes as run's:
    2 for a missing input, a bad spec or model.
    """
    log.configure(logging.WARNING)
    with user_errors(log.verbose, log.json, interactive=True):
        import batchnlp
        from batchnlp.execution.estimate import render_plan

        spec = source.spec(flags)
        figures = batchnlp.plan(spec, shards=shards, tokens_per_second=tokens_per_second, gpu_hour_price=gpu_hour_price)
    click.echo(json.dumps(figures, indent=2, ensure_ascii=False) if as_json else redact_text(render_plan(figures)))
