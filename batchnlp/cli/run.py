"""``batchnlp run``: a job (or one shard of it) from flags and a spec file, to its one commit."""

from __future__ import annotations

from typing import Any

import click

from batchnlp.cli.job_options import SpecSource, job_options
from batchnlp.cli.options import LogChoice
from batchnlp.cli.outcome import report_summary, user_errors
from batchnlp.observe.metrics import job_metrics

RUN_EXAMPLES = """
\b
Examples:
  batchnlp run s3://lake/reviews/ s3://lake/labelled/2026-11-24 --task sentiment
  batchnlp run 'data/*.jsonl' out/ --task sentiment --task classify \\
      --model classify=s3://models/topics/ --top-k 3
  batchnlp run reviews.parquet out/ --model sentiment=./my-sst2-checkpoint --workers 2
  batchnlp run --spec jobs/nightly-sentiment.yaml --overwrite
  batchnlp run contracts.parquet out/ --task qa --text-column body --question-column question
  batchnlp run tickets/ out/ --task qa --question "What product is affected?" --allow-no-answer
  batchnlp run --spec jobs/contract-fields.yaml     # several named questions per document
"""


@click.command(epilog=RUN_EXAMPLES)
@click.argument("input", required=False)
@click.argument("output", required=False)
@job_options
@click.option(
    "--shard",
    metavar="I/N",
    help="Run only shard I (from 0) of N of a run whose shards share --run-id and OUTPUT: its units of the plan the "
    "first shard stores, no commit (batchnlp commit does that once all are done). Example: --shard 3/8 --run-id night",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    metavar="N",
    help="As --shard, with I from AWS_BATCH_JOB_ARRAY_INDEX (an array job's child) or JOB_COMPLETION_INDEX (a "
    "Kubernetes indexed Job). Example: --shards 8 --run-id 2026-11-24",
)
def run(source: SpecSource, log: LogChoice, shard: str | None, shards: int | None, **flags: Any) -> None:
    """Annotate INPUT (file, directory/prefix or glob; local or s3://) into OUTPUT.

    Writes OUTPUT/part-NNNNN.parquet (or .arrow, .jsonl[.gz] with --output-format: every input
    column, one struct column per task, and _error), then _manifest.json, then _SUCCESS.
    Progress goes to stderr: a live bar on a terminal, a line every 30 s otherwise
    (BATCHNLP_PROGRESS_INTERVAL), none with --quiet.

    Exit codes: 0 committed (now or by an earlier run; bad lines within --max-bad-lines), or
    another live job owns this same run; 1 the job failed (retrying may help: --resume keeps
    finished parts); 2 usage, spec, input, model or output error (fix it first); 3 more bad input
    lines than --max-bad-lines: nothing committed; 143 (130) stopped by SIGTERM (SIGINT) after
    draining: retry, the next attempt resumes.
    """
    log.configure()
    import batchnlp
    from batchnlp.execution.shutdown import GracefulStop
    from batchnlp.observe.progress import ProgressReporter, choose_mode

    reporter = ProgressReporter(choose_mode(log.quiet, log.format), unit_events=log.json)
    stop = GracefulStop()
    outcome: dict[str, Any] = {}
    with job_metrics(log.json, outcome), stop.installed():
        with user_errors(log.verbose, log.json), reporter:
            spec = source.spec(flags)
            summary = batchnlp.run(
                spec, shard=shard, shards=shards, on_part=reporter.on_part, on_start=reporter.start, stop=stop
            )
            if summary is None:  # a multi-node job's child node: the main node reports the job
                outcome["child_node"] = True
                return
            reporter.finish(summary)
        outcome["summary"] = summary
        report_summary(summary, log)
