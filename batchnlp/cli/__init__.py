"""The ``batchnlp`` command: parse flags (and a job spec), call the library, print the outcome.

Commands stay thin; validation lives in :mod:`batchnlp.spec` and :mod:`batchnlp.cli.params`.

May import: everything (the CLI is the top layer); nothing imports it but ``python -m batchnlp``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import click
from click.core import ParameterSource

from batchnlp.cli.params import KeyValue
from batchnlp.errors import BatchnlpError, Interrupted
from batchnlp.observe.logs import configure_logging
from batchnlp.spec import COMPRESSION_NAMES, INPUT_FORMATS, MINIMUMS, OUTPUT_FORMATS, TABLE_FORMATS
from batchnlp.util.redaction import redact_text, redact_url
from batchnlp.version import __version__

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

# --scheduler tls://... (batchnlp.cluster.tls): what each file is; Dask's distributed.comm.tls config stands in for all.
TLS_FILES = {"--tls-ca-file": "the cluster's CA", "--tls-cert": "this client's certificate", "--tls-key": "its key"}
# CLI option name → settings key of the job spec, where they differ.
_SETTING_NAMES = {
    "task": "tasks",
    "model": "models",
    "storage_option": "storage_options",
    "catalog_option": "catalog_options",
}


class Commands(click.Group):
    """The command group; with ``--log-format json`` a usage error is a JSON line too (click would
    print it as text before the command could choose the log format)."""

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
            configure_logging(logging.ERROR, "json")
            _fail(e.format_message(), e.exit_code, json_logs=True)
        sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode ends


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchnlp")
def main() -> None:
    """Label JSONL, Parquet, Delta and Iceberg data with DistilBERT-class models on a Dask cluster;
    write Parquet, Arrow IPC, JSONL or a Delta/Iceberg table, committed exactly once."""


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

# The settings of a job, as flags: `run` takes them all, `plan` the same (it plans what `run` would run).
JOB_OPTIONS = [
    click.option(
        "--spec",
        "spec_file",
        help="YAML job spec with the same settings, a path, an s3:// URL or env:VARIABLE; flags override it. "
        "Example: --spec jobs/nightly-sentiment.yaml",
    ),
    click.option(
        "--task",
        multiple=True,
        metavar="NAME",
        help="Task to run, repeatable: sentiment, classify, qa. Default: sentiment. "
        "Example: --task sentiment --task classify",
    ),
    click.option(
        "--model",
        multiple=True,
        type=KeyValue("TASK"),
        metavar="TASK=REF",
        help="Model for a task: Hub id[@revision], local directory or s3:// prefix, optionally pinned @sha256:DIGEST "
        "(batchnlp models digest). Example: --model classify=s3://models/topics/",
    ),
    click.option(
        "--top-k",
        type=click.IntRange(min=MINIMUMS["top_k"]),
        help="classify: also keep the N best labels in a top_k list. Example: --top-k 3",
    ),
    click.option(
        "--keep-probs",
        is_flag=True,
        default=None,
        help="classify, sentiment: also write every label's probability (probs: list<float>, label order in the "
        "field's metadata), the soft labels batchnlp distill trains a student on. Example: --keep-probs",
    ),
    click.option(
        "--question",
        metavar="TEXT",
        help='qa: ask every row this question. Example: --question "Who is the buyer?"',
    ),
    click.option(
        "--question-column",
        metavar="NAME",
        help="qa: column (JSONL field) holding each row's question. Example: --question-column question",
    ),
    click.option(
        "--doc-stride",
        type=click.IntRange(min=MINIMUMS["doc_stride"]),
        help="qa: tokens of overlap between the windows of a long text. Default: 128 (at most half of --max-length). "
        "Example: --doc-stride 64",
    ),
    click.option(
        "--max-answer-length",
        type=click.IntRange(min=MINIMUMS["max_answer_length"]),
        help="qa: longest answer in tokens. Default: 15. Example: --max-answer-length 30",
    ),
    click.option(
        "--allow-no-answer",
        is_flag=True,
        default=None,
        help="qa: answer empty (score = the null score) when no span beats it, for SQuAD2-style models. "
        "Example: --allow-no-answer",
    ),
    click.option(
        "--input-format",
        type=click.Choice(INPUT_FORMATS),
        help="Input format when file names do not tell (.jsonl, .jsonl.gz, .jsonl.zst, .parquet), or a table: delta "
        "(INPUT is the table's directory or s3:// prefix), iceberg (INPUT is namespace.table in --catalog). "
        "Example: --input-format delta",
    ),
    click.option(
        "--output-format",
        type=click.Choice(OUTPUT_FORMATS),
        help="Part files: parquet (part-NNNNN.parquet, default), arrow (Arrow IPC file format, part-NNNNN.arrow) or "
        "jsonl (one JSON object per row, part-NNNNN.jsonl[.gz]); or one append commit to a table: delta (OUTPUT is "
        "the table's directory or s3:// prefix, created on first use), iceberg (OUTPUT is namespace.table in "
        "--catalog). Example: --output-format delta --run-id 2026-11-24",
    ),
    click.option(
        "--catalog",
        metavar="NAME",
        help="Iceberg catalog, configured as pyiceberg finds it (.pyiceberg.yaml, PYICEBERG_CATALOG__NAME__KEY "
        "variables). Default: default; with nothing configured, a SQLite catalog.db and warehouse/ in the working "
        "directory. Example: --catalog lake",
    ),
    click.option(
        "--catalog-option",
        multiple=True,
        type=KeyValue(typed=False),
        metavar="KEY=VALUE",
        help="Iceberg catalog property, over its configuration. Example: --catalog-option type=glue "
        "--catalog-option warehouse=s3://lake/warehouse",
    ),
    click.option(
        "--table-version",
        type=click.IntRange(min=MINIMUMS["table_version"]),
        metavar="N",
        help="Read this Delta version or Iceberg snapshot id instead of the latest. Example: --table-version 12",
    ),
    click.option(
        "--compression",
        type=click.Choice(COMPRESSION_NAMES),
        help="Compression of the parts: parquet zstd (default), snappy or none; jsonl none (default) or gzip; "
        "arrow none. Example: --output-format jsonl --compression gzip",
    ),
    click.option(
        "--partition-by",
        multiple=True,
        metavar="COL",
        help="Write Hive-partitioned output: OUTPUT/COL=value/.../part-NNNNN.<suffix>, the column left out of the "
        "files (readers get it back from the path). Repeat for nested keys; an input column or one of the input's "
        "own key=value partition keys. Example: --partition-by date --partition-by lang",
    ),
    click.option(
        "--text-column", help="Column (JSONL field) holding the text. Default: text. Example: --text-column body"
    ),
    click.option("--id-column", help="Column identifying rows in reports. Example: --id-column review_id"),
    click.option(
        "--on-bad-lines",
        type=click.Choice(["stop", "skip", "quarantine"]),
        help="JSONL lines that are not a JSON object (malformed, invalid UTF-8): stop naming the line (default), "
        "skip them (counted in the manifest), or quarantine them (also kept byte for byte under OUTPUT/_rejected/). "
        "Example: --on-bad-lines quarantine",
    ),
    click.option(
        "--max-bad-lines",
        metavar="N|FRACTION",
        help="With --on-bad-lines skip|quarantine: most bad lines a run may have and still commit (exit 0): a count, "
        "a fraction of the input's lines or a percentage. More: nothing is committed, exit 3. Default: any number. "
        "Example: --max-bad-lines 100, --max-bad-lines 0.1%",
    ),
    click.option(
        "--max-line-bytes",
        metavar="BYTES",
        help="A longer JSONL line is a bad line, set aside without being read whole (quarantined by its first "
        "4 KiB and length); a longer Parquet cell rejects its row. Default: 8MiB. Example: --max-line-bytes 32MiB",
    ),
    click.option(
        "--max-decompressed-bytes",
        metavar="BYTES",
        help="A compressed file decompressing past this, or past 1000x its size beyond 4 GiB, is refused from there "
        "on: the rest of it is one bad line naming the file. Default: 64GiB. Example: --max-decompressed-bytes 200GiB",
    ),
    click.option(
        "--rows-per-partition",
        type=click.IntRange(min=MINIMUMS["rows_per_partition"]),
        help="Rows in one unit of work (about: JSONL is cut by bytes). Default: 4 units per worker (fewer where "
        "units would fall under 250 rows), at most 10000 rows each. Example: --rows-per-partition 50000",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Use this Dask scheduler instead of an embedded local cluster. Example: --scheduler tcp://10.0.0.5:8786",
    ),
    *(
        click.option(flag, metavar="FILE", help=f"With --scheduler tls://...: {what} (PEM). Default: Dask's config.")
        for flag, what in TLS_FILES.items()
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=MINIMUMS["workers"]),
        help="Worker processes of the embedded cluster. Default: one per core, as memory allows; "
        "on GPUs, three per GPU. Example: --workers 2",
    ),
    click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        help="Where the model runs. Default: auto (cuda when present). Example: --device cpu",
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
        help="Numeric precision. Default: auto (fp32 on CPU, bf16/fp16 on CUDA). Example: --precision bf16",
    ),
    click.option(
        "--max-length",
        type=click.IntRange(min=MINIMUMS["max_length"]),
        help="Truncate texts to N tokens; qa cuts longer texts into windows of N tokens instead. Default: the model's "
        "maximum (512 for DistilBERT), 384 for qa. Example: --max-length 256",
    ),
    click.option(
        "--tokens-per-batch",
        type=click.IntRange(min=MINIMUMS["tokens_per_batch"]),
        help="Token budget of one padded batch. Default: 8192 on CPU (1024 with int8), 262144 on CUDA. "
        "Example: --tokens-per-batch 16384",
    ),
    click.option(
        "--rescore-margin",
        type=click.FloatRange(min=0, max=1, max_open=True),
        metavar="MARGIN",
        help="int8: rescore in fp32 every row whose best two label scores are closer than this, so int8 "
        "keeps fp32's labels. Default: 0.1; 0 never rescores. Example: --rescore-margin 0.2",
    ),
    click.option(
        "--storage-option",
        multiple=True,
        type=KeyValue(),
        metavar="KEY=VALUE",
        help="fsspec option for input, output and models. Example: --storage-option anon=true",
    ),
    click.option("--overwrite", is_flag=True, default=None, help="Replace a finished output (one holding _SUCCESS)."),
    click.option(
        "--resume", is_flag=True, default=None, help="Finish an interrupted run, keeping the parts it committed."
    ),
    click.option(
        "--break-lock",
        is_flag=True,
        default=None,
        help="Take OUTPUT even though another run's _lock.json says it is writing there (it must be dead).",
    ),
    click.option(
        "--lock-owner",
        metavar="JOB",
        help="The scheduled job this run belongs to, where no AWS_BATCH_JOB_ID or BATCHNLP_K8S_JOB_UID says: a later "
        "run with the same owner takes over its lock at once. Example: --lock-owner airflow:nightly:2026-11-24",
    ),
    click.option(
        "--grace-seconds",
        type=click.FloatRange(min=0, min_open=True),
        help="After SIGTERM/SIGINT, how long running units may finish before the run stops (exit 143/130). "
        "Default: 20, inside ECS's 30 s stop timeout. Example: --grace-seconds 90",
    ),
    click.option(
        "--unit-timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="A unit that makes no progress this long is rerun on a restarted worker. Default: 5 times the median "
        "unit time, at least 600. Example: --unit-timeout 1800",
    ),
    PARAM_OPTION,
    RUN_DATE_OPTION,
    click.option(
        "--incremental",
        is_flag=True,
        default=None,
        help="Label only input files no committed run at OUTPUT read as they are now (new or replaced), as a run of "
        "its own: OUTPUT/run_id=ID/ for part files, an append for a table. Example: --incremental --run-id 2026-11-24",
    ),
    click.option(
        "--run-id",
        metavar="ID",
        help="Name the run (manifest, lock, logs). Default: generated. Rerunning a committed run's id exits 0 "
        "without redoing it, so a retried scheduled job is harmless. Example: --run-id 2026-11-24",
    ),
    *LOG_OPTIONS,
]


def job_options(command: Any) -> Any:
    """Decorate ``command`` with :data:`JOB_OPTIONS`, in the order ``--help`` lists them."""
    return _with(JOB_OPTIONS, command)


def log_options(command: Any) -> Any:
    """Decorate ``command`` with :data:`LOG_OPTIONS` (``-v``, ``-q``, ``--log-format``)."""
    return _with(LOG_OPTIONS, command)


def log_level(verbose: bool, quiet: bool, default: int = logging.INFO) -> int:
    """The level :data:`LOG_OPTIONS` ask for: DEBUG with -v, only errors with -q."""
    return logging.DEBUG if verbose else logging.ERROR if quiet else default


def _with(options: list[Any], command: Any) -> Any:
    for option in reversed(options):
        command = option(command)
    return command


@main.command(epilog=RUN_EXAMPLES)
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
@click.pass_context
def run(
    ctx: click.Context,
    spec_file: str | None,
    verbose: bool,
    quiet: bool,
    log_format: str,
    param: Any,
    run_date: str | None,
    shard: str | None,
    shards: int | None,
    **flags: Any,
) -> None:
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
    configure_logging(log_level(verbose, quiet), log_format)
    from batchnlp.execution.shutdown import GracefulStop
    from batchnlp.observe.progress import ProgressReporter, choose_mode

    reporter = ProgressReporter(choose_mode(quiet, log_format), unit_events=log_format == "json")
    stop = GracefulStop()
    outcome: dict[str, Any] = {}
    with _job_metrics(log_format == "json", outcome), stop.installed():
        with _user_errors(verbose, log_format == "json"), reporter:
            from batchnlp.cluster.local import begin_worker_imports
            from batchnlp.cluster.multinode import node_role

            spec = job_spec(ctx, spec_file, param, run_date, flags)
            part_of = _shard(shard, shards)
            stop.grace_seconds = spec.grace_seconds
            role = node_role(os.environ)  # an AWS Batch multi-node job's main or child node, else single
            if role.kind != "child":  # first: the workers' imports take seconds, and go on while the job plans
                begin_worker_imports(spec.scheduler, spec.workers, spec.device)
            from batchnlp.cluster.multinode import multinode_job, serve_child
            from batchnlp.execution.runner import run as run_job
            from batchnlp.execution.shards.run import run_shard
            from batchnlp.execution.spot import watching

            if role.kind == "child":  # only Dask workers here, until the main node's scheduler closes
                serve_child(role, spec.device, spec.workers)
                outcome["child_node"] = True  # the main node reports the job's metrics
                return
            with multinode_job(spec, role) as spec, watching(stop):  # main node: own scheduler, every node joined
                if part_of is None:
                    summary = run_job(spec, on_part=reporter.on_part, on_start=reporter.start, stop=stop)
                else:
                    summary = run_shard(spec, part_of, on_part=reporter.on_part, on_start=reporter.start, stop=stop)
            reporter.finish(summary)
        outcome["summary"] = summary
        if not quiet:
            for line in _summary_lines(summary):
                _say(line, log_format == "json", "summary", run_id=summary.run_id)


def _shard(shard: str | None, shards: int | None) -> Any:
    """The shard ``--shard I/N`` or ``--shards N`` (index from the environment) names; None: the whole run."""
    from batchnlp.execution.shards.plan import Shard

    if shard and shards:
        raise click.UsageError("--shard and --shards exclude each other: --shard names the index, --shards reads it")
    if shard:
        return Shard.parse(shard)
    return Shard.from_environment(shards) if shards else None


@main.command("commit")
@click.argument("output", required=False)
@click.option(
    "--run-id",
    required=True,
    metavar="ID",
    callback=lambda ctx, param, value: _run_id(value),
    help="The sharded run to commit. Example: --run-id 2026-11-24",
)
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
@click.option(
    "--catalog-option", multiple=True, type=KeyValue(typed=False), metavar="KEY=VALUE", help="Iceberg catalog property."
)
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option for OUTPUT.")
@click.option("--break-lock", is_flag=True, default=None, help="Take OUTPUT although another commit's lock is there.")
@log_options
@click.pass_context
def commit(
    ctx: click.Context,
    spec_file: str | None,
    verbose: bool,
    quiet: bool,
    log_format: str,
    param: Any,
    run_date: str | None,
    **flags: Any,
) -> None:
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
    configure_logging(log_level(verbose, quiet), log_format)
    outcome: dict[str, Any] = {}
    with _job_metrics(log_format == "json", outcome):  # its line last, as `run` ends
        with _user_errors(verbose, log_format == "json"):
            from batchnlp.execution.shards.run import finalize

            outcome["summary"] = summary = finalize(_commit_spec(ctx, spec_file, param, run_date, flags))
        if not quiet:
            for line in _summary_lines(summary):
                _say(line, log_format == "json", "summary", run_id=summary.run_id)


def _commit_spec(
    ctx: click.Context, spec_file: str | None, param: Any, run_date: str | None, flags: dict[str, Any]
) -> Any:
    """What `commit` needs to find a run: its output (and format, catalog), its run id, storage options."""
    if spec_file:
        return job_spec(ctx, spec_file, param, run_date, flags)
    if not flags["output"]:
        raise click.UsageError("name the run's OUTPUT, or pass the shards' --spec")
    from batchnlp.execution.shards.plan import staged_table
    from batchnlp.spec import JobSpec

    options = dict(flags["storage_option"])
    fmt = flags["output_format"] or staged_table(flags["output"], flags["run_id"], options)
    settings = {
        "input": "-",  # the run's stored plan holds its input
        "output": flags["output"],
        "output_format": fmt,
        "run_id": flags["run_id"],
        "catalog": flags["catalog"],
        "catalog_options": dict(flags["catalog_option"]),
        "storage_options": options,
        "break_lock": flags["break_lock"],
    }
    return JobSpec.from_settings(settings)


PLAN_EXAMPLES = """
\b
Examples:
  batchnlp plan 'data/*.jsonl' out/ --task sentiment --shards 8 --gpu-hour-price 3.50
  batchnlp plan --spec jobs/nightly-labels.yaml --run-date 2026-11-25 --json
  batchnlp plan contracts.parquet out/ --task qa --question-column question --device cuda
"""


@main.command("plan", epilog=PLAN_EXAMPLES)
@click.argument("input", required=False)
@click.argument("output", required=False)
@job_options
@click.option(
    "--tokens-per-second",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="Throughput of one shard. Default: the README's measured figure for the device and precision "
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
@click.pass_context
def plan_command(
    ctx: click.Context,
    spec_file: str | None,
    verbose: bool,
    quiet: bool,
    log_format: str,
    param: Any,
    run_date: str | None,
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
    configure_logging(log_level(verbose, quiet, logging.WARNING), log_format)
    with _user_errors(verbose, log_format == "json", interactive=True):
        from batchnlp.execution.estimate import plan_run, render_plan
        from batchnlp.execution.plan import check_columns, plan

        spec = job_spec(ctx, spec_file, param, run_date, flags)
        job_plan = plan(spec)
        if job_plan.schema is not None:
            check_columns(spec, job_plan.schema)
        figures = plan_run(spec, job_plan, shards, tokens_per_second, gpu_hour_price)
    click.echo(json.dumps(figures, indent=2, ensure_ascii=False) if as_json else redact_text(render_plan(figures)))


@main.command("distill")
@click.argument("teacher_output")
@click.argument("student_dir")
@click.option("--task", metavar="NAME", help="The task column to learn. Default: the output's one classifier.")
@click.option("--output-format", type=click.Choice(TABLE_FORMATS), help="TEACHER_OUTPUT is a table.")
@click.option("--catalog", default="default", metavar="NAME", help="Iceberg: the catalog holding TEACHER_OUTPUT.")
@click.option(
    "--catalog-option", multiple=True, type=KeyValue(typed=False), metavar="KEY=VALUE", help="Iceberg catalog property."
)
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option.")
@click.option("--teacher-model", metavar="REF", help="The teacher checkpoint. Default: the one the output names.")
@click.option("--student-init", metavar="REF", help="Start from this checkpoint instead of the teacher's layers.")
@click.option("--layers", type=click.IntRange(min=1), help="Student layers. Default: half the teacher's.")
@click.option("--hidden", type=click.IntRange(min=8), help="Student width; other than the teacher's: random start.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Softens both distributions in the KL term (scaled by T²).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the soft (KL) loss; 1 - alpha weighs cross-entropy on the teacher's labels.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Passes over the rows.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per step.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=5e-5, show_default=True, help="AdamW peak rate."
)
@click.option("--max-length", type=click.IntRange(min=8), help="Truncate training texts. Default: the model's.")
@click.option(
    "--eval-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Rows held out to measure the student, picked by a hash of the id column (else the row position).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, rows and device: same weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="Training: bf16 autocast (auto on a GPU with bf16) or fp32. Measuring: as batchnlp run's.",
)
@click.option("--resume", is_flag=True, help="Continue after the last epoch checkpointed in STUDENT_DIR.")
@click.option("--overwrite", is_flag=True, help="Replace the student in STUDENT_DIR.")
@log_options
def distill_command(
    teacher_output: str,
    student_dir: str,
    verbose: bool,
    quiet: bool,
    log_format: str,
    **flags: Any,
) -> None:
    """Train a smaller student on the labels of a committed run (written with --keep-probs), then
    measure it against its teacher on held-out rows: _distill_report.json/.html and a model card.

    Exit codes: 0 done; 2 an output that is not committed, has no probabilities or no such task,
    or bad flags; 1 anything else.

    \b
    Examples:
      batchnlp run reviews/ labelled/ --task classify --model classify=./topics --keep-probs
      batchnlp distill labelled/ ./topics-student --task classify --epochs 3
      batchnlp run reviews/ cheap/ --task classify --model classify=./topics-student
    """
    configure_logging(log_level(verbose, quiet), log_format)
    from batchnlp.observe.progress import choose_mode

    if flags["resume"] and flags["overwrite"]:
        raise click.UsageError("--resume and --overwrite exclude each other; pick one")
    with _user_errors(verbose, log_format == "json"):
        from batchnlp.distillation.data import TeacherSource
        from batchnlp.distillation.job import DistillSpec, TrainingProgress, distill
        from batchnlp.distillation.train import TrainSettings

        source = TeacherSource(
            teacher_output,
            flags["output_format"],
            dict(flags["storage_option"]),
            flags["catalog"],
            dict(flags["catalog_option"]),
        )
        training = ("epochs", "batch_size", "lr", "temperature", "alpha", "seed", "max_length")
        spec = DistillSpec(
            source,
            student_dir,
            **{k: flags[k] for k in ("task", "teacher_model", "student_init", "layers", "hidden", "eval_fraction")},
            train=TrainSettings(**{k: flags[k] for k in training}),
            device=flags["device"],
            precision=flags["precision"],
            mode="resume" if flags["resume"] else "overwrite" if flags["overwrite"] else "new",
        )
        with TrainingProgress(choose_mode(quiet, log_format)) as progress:
            result = distill(spec, progress)
    if not quiet:
        line = result.summary()
        _say(line, log_format == "json", "distill_done")


def _summary_lines(summary: Any) -> list[str]:
    """What a finished run tells its user: rows, parts, speed; a table commit; bad input lines."""
    t, table = summary.totals, summary.table
    if summary.shard is not None and not summary.already_complete:
        return [
            f"shard {summary.shard} wrote {t.rows_out} rows ({t.rejected} rejected) in {t.parts} "
            f"part{'s' * (t.parts != 1)} to {summary.output} in {summary.wall_seconds:.1f} s"
            + (f"; {summary.units_kept} parts kept from an earlier attempt" if summary.units_kept else "")
            + f"; nothing committed: when every shard is done, batchnlp commit {summary.output} "
            f"--run-id {summary.run_id}"
        ]
    commit = f"{table.kind} {table.version}" if table else ""  # "version 3" (Delta), "snapshot 5012…" (Iceberg)
    if summary.nothing_new:
        return [f"nothing new to label at {summary.output}: every input file was labelled by a committed run"]
    if summary.already_complete:
        if table:
            return [f"{table.table} already holds run {summary.run_id} ({commit}); nothing to do"]
        return [f"{summary.output} is already complete (run {summary.run_id}, {t.rows_out} rows); nothing to do"]
    first_row = (summary.manifest.startup or {}).get("first_row_s")
    lines = [
        f"wrote {t.rows_out} rows ({t.rejected} rejected) in {t.parts} part{'s' * (t.parts != 1)} "
        f"to {summary.output} "
        f"in {summary.wall_seconds:.1f} s: {summary.rows_per_second:.1f} rows/s, "
        f"{t.tokens} tokens ({t.padded_tokens} with padding); run {summary.run_id}"
        + (f"; first row after {first_row:.1f} s" if first_row else "")
        + (f"; {summary.units_kept} parts kept from the interrupted run" if summary.units_kept else "")
    ]
    if table:
        done = "committed" if table.new else "found already committed"
        lines.append(f"{done} to {table.table} as {commit} (one commit, run id {summary.run_id})")
    if t.bad_lines:
        where = "under _rejected/" if summary.manifest.spec["on_bad_lines"] == "quarantine" else "skipped"
        first = t.bad_line_examples[0]
        lines.append(
            f"{t.bad_lines} input line{'s' * (t.bad_lines != 1)} that were not JSON objects {where}, "
            f"first {first['source']}:{first['line']} ({first['reason']}); see _manifest.json"
        )
    return lines


def _say(message: str, json_logs: bool, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A command's outcome: a plain line (stdout, or stderr for an error), or with --log-format json
    a JSON log line like every other (containers send both streams to one log)."""
    if json_logs:
        from batchnlp.observe.logs import emit

        emit(redact_text(message), event, level, **fields)
    else:
        click.echo(redact_text(message), err=level >= logging.WARNING)


@contextmanager
def _job_metrics(enabled: bool, outcome: dict[str, Any]) -> Iterator[None]:
    """With JSON logs, end with the CloudWatch EMF line (:mod:`batchnlp.observe.metrics`), success or not."""
    import time

    started = time.monotonic()
    code: int = 0
    try:
        yield
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        raise
    except BaseException:
        code = 1
        raise
    finally:
        if enabled and not outcome.get("child_node"):
            from batchnlp.observe.metrics import emf_fields, emit

            summary = outcome.get("summary")
            totals = summary.totals if summary is not None else None
            committed = summary is not None and code == 0 and summary.shard is None  # a shard commits nothing
            emit(emf_fields(totals, committed, time.monotonic() - started, code))
            # The line stays last: what distributed says as the interpreter tears down its comms
            # ("Closing dangling stream" after a SIGTERM mid-start-up) is no news of the job.
            logging.getLogger("distributed").setLevel(logging.ERROR)


def job_spec(ctx: click.Context, spec_file: str | None, param: Any, run_date: str | None, flags: dict[str, Any]) -> Any:
    """The JobSpec of a command taking :data:`JOB_OPTIONS`: the spec file, flags over it, placeholders filled."""
    from batchnlp.spec import JobSpec, load_spec_file
    from batchnlp.util.templating import render

    settings = load_spec_file(spec_file) if spec_file else {}
    params = {**dict(param), **({"run_date": run_date} if run_date else {})}
    return JobSpec.from_settings(render(_merge(ctx, settings, flags), params))


def _merge(ctx: click.Context, settings: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line override the spec file; repeatable ones merge by key."""
    merged = dict(settings)
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if source not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) or value in ((), None):
            continue
        key = _SETTING_NAMES.get(name, name)
        if name in ("overwrite", "resume"):  # a write mode on the command line replaces the spec's
            for mode_key in ("mode", "overwrite", "resume"):
                merged.pop(mode_key, None)
        if name in ("model", "storage_option", "catalog_option"):
            base = merged.get(key) if isinstance(merged.get(key), dict) else {}
            merged[key] = {**base, **dict(value)}
        elif name == "task":
            merged[key] = list(value)
        else:
            merged[key] = value
    return merged


@main.command(context_settings={"ignore_unknown_options": True}, epilog=SUBMIT_EXAMPLES)
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
@click.option(
    "--run-id",
    metavar="ID",
    callback=lambda ctx, param, value: _run_id(value),
    help="The run's id (run's and commit's --run-id). With --shards: the date.",
)
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
    if shards is None and (only_shards or finalize_queue or finalize_job_definition):
        raise click.UsageError("--only-shards, --finalize-queue and --finalize-job-definition need --shards N")
    if only_shards and not run_id:
        raise click.UsageError("--only-shards reruns shards of one run: name it, --run-id ID (by default its date)")
    backfill = date_from or date_to
    if backfill and not (date_from and date_to):
        raise click.UsageError("a backfill needs both --from DATE and --to DATE")
    if backfill and (run_date or run_id or name):
        raise click.UsageError("--from/--to set each run's date, id and name: drop --run-date, --run-id, --name")
    only = _shard_list(only_shards) if only_shards else ()
    with _user_errors(False, interactive=dry_run):
        from batchnlp.deploy import aws_batch as batch

        base: Any = batch.Submission(
            spec, queue, job_definition, dict(param), run_args, dict(env), nodes, name, run_date, run_id, dict(secret)
        )
        if shards is not None:
            base = batch.ShardedSubmission(base, shards, finalize_queue, finalize_job_definition, only)
        if backfill:
            from batchnlp.deploy.backfill import backfill as submit_dates

            lines = submit_dates(base, date_from, date_to, dry_run, region)
        else:
            lines = batch.send(base, dry_run, region)
    note = batch.secret_note(base) if dry_run else None
    if note:  # on stderr: stdout is the request(s), JSON a script parses
        click.echo(note, err=True)
    for line in lines:
        click.echo(line)


def _run_id(value: str | None) -> str | None:
    """``--run-id`` of commands that use it before any job spec checks it (it names a folder)."""
    from batchnlp.spec import RUN_ID_RULE, valid_run_id

    if value is not None and not valid_run_id(value):
        raise click.BadParameter(f"must be {RUN_ID_RULE}, got {value!r}", param_hint="--run-id")
    return value


def _shard_list(text: str) -> tuple[int, ...]:
    """``--only-shards 3,5`` as sorted, distinct indexes."""
    try:
        return tuple(sorted({int(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        raise click.UsageError(f"--only-shards takes shard indexes joined by commas, e.g. 3,5; got {text!r}") from None


@main.command()
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Print each status change until the job succeeds or fails.")
@click.option("--region", help="AWS region. Default: the AWS configuration's.")
def status(job_id: str, follow: bool, region: str | None) -> None:
    """Show an AWS Batch job's status, attempts and log stream; exit 1 if it failed."""
    with _user_errors(False):
        from batchnlp.deploy import aws_batch as batch

        jobs = batch.follow(job_id, region) if follow else iter([batch.describe(job_id, region)])
        job = {}
        for job in jobs:
            click.echo(batch.summary(job))
    if job.get("status") == "FAILED":
        sys.exit(1)


@main.group()
def models() -> None:
    """Stage checkpoints in object storage, for jobs that cannot reach the Hugging Face Hub."""


@models.command("pull")
@click.argument("ref")
@click.argument("dest")
@click.option("--overwrite", is_flag=True, help="Replace the files of a model already at DEST.")
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option for DEST.")
def models_pull(ref: str, dest: str, overwrite: bool, storage_option: Any) -> None:
    """Copy REF (Hub id[@revision] or local directory) to DEST, e.g. s3://bucket/models/sst2/."""
    with _user_errors(False):
        from batchnlp.inference.models.store import pull

        provenance = pull(ref, dest, dict(storage_option), overwrite)
    revision = f" at revision {provenance['revision']}" if provenance["revision"] else ""
    click.echo(f"copied {ref}{revision} to {redact_url(dest)}: {', '.join(provenance['files'])}")
    click.echo(f"digest {provenance['digest']}; pin it in a job spec as {redact_url(dest)}@{provenance['digest']}")


@models.command("digest")
@click.argument("ref")
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option for REF.")
def models_digest(ref: str, storage_option: Any) -> None:
    """Print REF pinned to its content, for a job spec: REF@sha256:<digest>.

    The digest covers the files a job loads (config, tokenizer, *.safetensors) and is the same
    for a directory and its copy in S3. An s3:// prefix is downloaded to hash it, once per
    machine (into the model cache jobs use). A Hub id prints as ID@COMMIT: Hub refs pin by commit.

    \b
    Examples:
      batchnlp models digest s3://acme-models/models/distilbert-sst2/
      batchnlp models digest ./checkpoints/sst2
    """
    with _user_errors(False, interactive=True):
        from batchnlp.inference.models import pinned

        click.echo(pinned(ref, dict(storage_option)))


@models.command("ls")
@click.argument("url")
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option for URL.")
def models_ls(url: str, storage_option: Any) -> None:
    """List the checkpoints at URL and one level below it."""
    with _user_errors(False):
        from batchnlp.inference.models.store import list_models

        found = list_models(url, dict(storage_option))
    if not found:
        click.echo(f"no checkpoints (config.json) at {redact_url(url)} or one level below")
    for model in found:
        revision = model["revision"] or "-"
        source = f"  {model['source']}@{revision} pulled {model['pulled_at']}" if model["source"] else ""
        click.echo(f"{model['url']}  {model['files']} files  {model['bytes'] / 1e6:.1f} MB{source}")


@main.command("inspect")
@click.argument("output")
@click.option("--rows", type=click.IntRange(min=0), default=0, help="Also show the first N annotated rows.")
@click.option("--storage-option", multiple=True, type=KeyValue(), metavar="KEY=VALUE", help="fsspec option for OUTPUT.")
def inspect_output(output: str, rows: int, storage_option: Any) -> None:
    """Summarise the run at OUTPUT (committed or interrupted) from its manifest or progress records.

    \b
    Examples:
      batchnlp inspect s3://lake/labelled/2026-11-24
      batchnlp inspect out/ --rows 5
    """
    with _user_errors(False, interactive=True):
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


@contextmanager
def _user_errors(verbose: bool, json_logs: bool = False, interactive: bool = False) -> Iterator[None]:
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
        _fail(str(e), e.exit_code, json_logs)
    except Exception as e:
        failure = unnamed_storage_error(e)
        if failure is not None:
            _fail(str(failure), failure.exit_code, json_logs)
        if verbose:
            raise
        _fail(
            f"unexpected {type(e).__name__}: {e}\n(this is a bug in batchnlp; rerun with --verbose for the traceback)",
            1,
            json_logs,
        )


def _fail(message: str, code: int, json_logs: bool = False) -> None:
    """End the command: an error, or with code 0 (another job owns the run) a notice on stdout."""
    text = message if code == 0 or json_logs else f"error: {message}"
    event, level = ("failed", logging.ERROR) if code else ("owned_elsewhere", logging.INFO)
    _say(text, json_logs, event, level, exit_code=code)
    sys.exit(code)
