"""``batchnlp submit`` and ``batchnlp status``: a job spec to AWS Batch, and how its job is doing."""

from __future__ import annotations

import sys
from typing import Any

import click

from batchnlp.cli.options import PARAM_OPTION, RUN_DATE_OPTION, run_id_option
from batchnlp.cli.outcome import user_errors
from batchnlp.cli.params import KeyValue

SUBMIT_EXAMPLES = """
\b
Examples:
  batchnlp submit --spec jobs/nightly-labels.yaml --queue batchnlp-gpu --job-definition batchnlp-gpu
  batchnlp submit --spec s3://lake/specs/nightly.yaml --queue batchnlp-multi-node \\
      --job-definition batchnlp-multi-node --nodes 4 --run-date 2026-11-24
  batchnlp submit --spec jobs/nightly-labels.yaml --queue q --job-definition d --dry-run -- --workers 2
  batchnlp submit --spec s3://lake/specs/nightly.yaml --queue batchnlp-gpu --job-definition batchnlp-gpu \\
      --shards 8 --run-date 2026-11-24
  batchnlp submit --spec s3://lake/specs/nightly.yaml --queue batchnlp-gpu --job-definition batchnlp-gpu \\
      --shards 8 --run-id 2026-11-24 --run-date 2026-11-24 --only-shards 3,5
  batchnlp submit --spec jobs/nightly-labels.yaml --queue batchnlp-gpu --job-definition batchnlp-gpu \\
      --from 2026-11-01 --to 2026-11-20 --dry-run
"""


@click.command(context_settings={"ignore_unknown_options": True}, epilog=SUBMIT_EXAMPLES)
@click.option("--spec", "spec", required=True, help="Job spec: a local file (sent inline) or an s3:// URL.")
@click.option("--queue", required=True, help="AWS Batch job queue. Example: --queue batchnlp-gpu-spot")
@click.option("--job-definition", required=True, help="Job definition name[:revision]. Example: --job-definition bnlp")
@PARAM_OPTION
@click.option(
    "--nodes",
    type=click.IntRange(min=2),
    help="Run as a multi-node parallel job over N machines (on-demand queues only). Example: --nodes 4",
)
@click.option(
    "--shards",
    type=click.IntRange(min=2, max=10_000),
    metavar="N",
    help="Run as an array job of N shards (Spot queues welcome), then one `batchnlp commit` job that waits for them "
    "all. Example: --shards 8",
)
@click.option(
    "--only-shards",
    metavar="I,J",
    help="With --shards and --run-id: rerun only these shards (from 0) of that run, and a new commit job. "
    "Example: --only-shards 3,5",
)
@run_id_option("The run's id (run's and commit's --run-id). With --shards: the date.")
@click.option("--finalize-queue", metavar="QUEUE", help="Queue of the commit job (it needs no GPU). Default: --queue.")
@click.option("--finalize-job-definition", metavar="DEF", help="Job definition of the commit job. Default: the shards.")
@click.option("--from", "date_from", metavar="DATE", help="Backfill: one run per date from DATE (with --to).")
@click.option("--to", "date_to", metavar="DATE", help="Backfill: ... to DATE, included; committed dates are skipped.")
@click.option("--env", multiple=True, type=KeyValue("NAME", typed=False), metavar="NAME=VALUE", help="Extra variable.")
@click.option(
    "--secret",
    multiple=True,
    type=KeyValue("NAME", typed=False),
    metavar="NAME=ARN",
    help="Variable NAME from a Secrets Manager secret or SSM parameter (Batch `secrets`): the one way to pass a "
    "credential; --env, --param, run arguments and an inline spec holding one are refused.",
)
@click.option("--name", help="Job name. Default: batchnlp-<spec name>-<run date>.")
@click.option("--region", help="AWS region. Default: the AWS configuration's.")
@RUN_DATE_OPTION
@click.option("--dry-run", is_flag=True, help="Print the SubmitJob request(s) (a backfill: the dates) and stop.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def submit(
    spec: str,
    queue: str,
    job_definition: str,
    param: Any,
    nodes: int | None,
    shards: int | None,
    only_shards: str | None,
    run_id: str | None,
    finalize_queue: str | None,
    finalize_job_definition: str | None,
    date_from: str | None,
    date_to: str | None,
    env: Any,
    secret: Any,
    name: str | None,
    region: str | None,
    run_date: str | None,
    dry_run: bool,
    run_args: tuple[str, ...],
) -> None:
    """Submit a job spec to AWS Batch; RUN_ARGS after -- go to `batchnlp run` in the container.

    --shards N: an array job of N `batchnlp run --shards N` children and one `batchnlp commit` job
    that runs once all succeeded. --from/--to: one run per date (run date and run id the date),
    skipping dates whose output already holds their commit.
    """
    import batchnlp

    only = _shard_list(only_shards) if only_shards else ()
    with user_errors(False, interactive=dry_run):
        submitted = batchnlp.submit(
            spec,
            queue=queue,
            job_definition=job_definition,
            params=dict(param),
            nodes=nodes,
            shards=shards,
            only_shards=only,
            run_id=run_id,
            finalize_queue=finalize_queue,
            finalize_job_definition=finalize_job_definition,
            date_from=date_from,
            date_to=date_to,
            env=dict(env),
            secrets=dict(secret),
            name=name,
            region=region,
            run_date=run_date,
            run_args=run_args,
            dry_run=dry_run,
        )
    if submitted.note:  # on stderr: stdout is the request(s), JSON a script parses
        click.echo(submitted.note, err=True)
    for line in submitted.lines:
        click.echo(line)


def _shard_list(text: str) -> tuple[int, ...]:
    """``--only-shards 3,5`` as sorted, distinct indexes."""
    try:
        return tuple(sorted({int(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        raise click.UsageError(f"--only-shards takes shard indexes joined by commas, e.g. 3,5; got {text!r}") from None


@click.command()
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Print each status change until the job succeeds or fails.")
@click.option("--region", help="AWS region. Default: the AWS configuration's.")
def status(job_id: str, follow: bool, region: str | None) -> None:
    """Show an AWS Batch job's status, attempts and log stream; exit 1 if it failed."""
    with user_errors(False):
        from batchnlp.deploy import aws_batch as batch

        jobs = batch.follow(job_id, region) if follow else iter([batch.describe(job_id, region)])
        job = {}
        for job in jobs:
            click.echo(batch.summary(job))
    if job.get("status") == "FAILED":
        sys.exit(1)
