"""The settings of a job as flags (:data:`JOB_OPTIONS`: ``run`` takes them all, ``plan`` the same,
as it plans what ``run`` would run), and the JobSpec a command's flags make: the flags given
on the command line override the spec file as keyword arguments of :func:`batchnlp.job_spec` do
(:mod:`batchnlp.spec.merge`). This module is declarations: one ``click.option`` per setting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from batchnlp.cli.options import (
    LOG_OPTIONS,
    PARAM_OPTION,
    RUN_DATE_OPTION,
    catalog_option,
    logged,
    storage_option,
    with_options,
)
from batchnlp.cli.params import KeyValue
from batchnlp.spec import COMPRESSION_NAMES, INPUT_FORMATS, MINIMUMS, OUTPUT_FORMATS
from batchnlp.tasks import AGGREGATIONS, DEFAULT_AGGREGATION, DEFAULT_CASCADE_MARGIN, DEFAULT_HYPOTHESIS, TASKS

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

# --scheduler tls://... (batchnlp.cluster.tls): what each file is; Dask's distributed.comm.tls config stands in for all.
TLS_FILES = {"--tls-ca-file": "the cluster's CA", "--tls-cert": "this client's certificate", "--tls-key": "its key"}
# CLI option name → settings key of the job spec, where they differ.
SETTING_NAMES = {
    "task": "tasks",
    "model": "models",
    "storage_option": "storage_options",
    "catalog_option": "catalog_options",
}


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
        help=f"Task to run, repeatable: {', '.join(TASKS)}. Default: sentiment. "
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
        help="classify, sentiment, zero-shot: also write every label's probability (probs: list<float>, label order "
        "in the field's metadata), the soft labels batchnlp distill trains a student on (not zero-shot's). "
        "Example: --keep-probs",
    ),
    click.option(
        "--embed-dtype",
        type=click.Choice(["float32", "float16"]),
        help="embed: the embeddings' float type (fixed_size_list<float32|float16>[dim]); float16 halves the column. "
        "Example: --embed-dtype float16",
    ),
    click.option(
        "--chunk-tokens",
        type=click.IntRange(min=MINIMUMS["chunk_tokens"]),
        metavar="N",
        help="embed: cut each text into windows of N tokens ([CLS] and [SEP] included; at most the model's maximum) "
        "and write one embedding per window, with its character span (list<struct<embedding, start, end>>), "
        "the form retrieval indexes take. Example: --chunk-tokens 128",
    ),
    click.option(
        "--chunk-stride",
        type=click.IntRange(min=MINIMUMS["chunk_stride"]),
        metavar="S",
        help="embed with --chunk-tokens: consecutive windows share S tokens, so a sentence cut at one window's end "
        "is whole in the next. Default: 0. Example: --chunk-stride 32",
    ),
    click.option(
        "--aggregation",
        type=click.Choice(AGGREGATIONS),
        help="ner: how token labels become entities, as transformers' token-classification pipeline's "
        "aggregation_strategy: simple groups adjacent tokens of one type, first/average/max first give each word "
        f"one label, none keeps each token (entity B-PER, I-PER...). Default: {DEFAULT_AGGREGATION}. "
        "Example: --aggregation first",
    ),
    click.option(
        "--entities",
        metavar="TYPES",
        help="ner: keep only these entity types, comma-separated, as the model names them (with --aggregation "
        "none, the label less B-/I-). Default: all. Example: --entities PER,LOC",
    ),
    click.option(
        "--redact",
        is_flag=True,
        default=None,
        help="ner: also write the text with each kept entity replaced by its type ([PER]) in a column "
        "<task>_redacted after the task's. The text column stays unless you drop it. Example: --redact",
    ),
    click.option(
        "--labels",
        metavar="A,B,C",
        help="zero-shot (required there): the candidate labels, comma-separated (a label holding a comma goes in a "
        'job spec\'s labels list). Example: --labels "sports,politics,technology"',
    ),
    click.option(
        "--hypothesis",
        metavar="TEMPLATE",
        help=f"zero-shot: the hypothesis each label is tested as, {{}} standing for the label. Default: "
        f'"{DEFAULT_HYPOTHESIS}" (the pipeline\'s). Example: --hypothesis "This review is about {{}}."',
    ),
    click.option(
        "--multi-label",
        is_flag=True,
        default=None,
        help="zero-shot: score each label on its own (entailment against contradiction), not as one softmax over "
        "the labels. Example: --multi-label",
    ),
    click.option(
        "--cascade",
        multiple=True,
        type=KeyValue("TASK"),
        metavar="TASK=STUDENT_REF",
        help="classify, sentiment: a cascade. This student model (any ref --model takes; batchnlp distill makes one) "
        "labels every row, and the task's own model (the teacher) labels instead the rows whose best two student "
        "scores are closer than --cascade-margin; repeatable. Example: --cascade classify=./topics-student",
    ),
    click.option(
        "--cascade-margin",
        type=click.FloatRange(min=0, max=1, max_open=True),
        metavar="MARGIN",
        help="A cascade's student hands its teacher every row whose best two label scores are closer than this "
        f"(batchnlp distill prints the smallest that keeps 99.5% of the teacher's labels). Default: "
        f"{DEFAULT_CASCADE_MARGIN}; 0: the student labels every row. Example: --cascade-margin 0.12",
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
    catalog_option(
        "over its configuration. Example: --catalog-option type=glue --catalog-option warehouse=s3://lake/warehouse"
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
        "--backend",
        type=click.Choice(["auto", "torch", "onnxruntime"]),
        help="What runs the model: onnxruntime (batchnlp's ONNX export of DistilBERT and BERT; CPU fp32, int8) "
        "or torch. "
        "Default: auto (onnxruntime on CPU in fp32 and int8 where installed, torch elsewhere). "
        "Example: --backend torch",
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
        help="Token budget of one padded batch. Default: 1024 on ONNX Runtime and with torch int8, 8192 with torch "
        "on CPU, 262144 on CUDA. "
        "Example: --tokens-per-batch 16384",
    ),
    click.option(
        "--rescore-margin",
        type=click.FloatRange(min=0, max=1, max_open=True),
        metavar="MARGIN",
        help="int8: rescore in fp32 every row whose best two label scores are closer than this, so int8 "
        "keeps fp32's labels. Default: 0.1; 0 never rescores. Example: --rescore-margin 0.2",
    ),
    storage_option("input, output and models"),
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
        "--no-dedup",
        "dedup",
        flag_value=False,
        default=None,
        help="Run the model on every row. By default each distinct input (the exact text, and question for qa) is "
        "labelled once per run, across units and workers, and every row holding it gets the same answer.",
    ),
    click.option(
        "--label-cache",
        metavar="URI",
        help="A label cache (a folder or s3:// prefix): inputs an earlier run labelled with the same model and "
        "settings are taken from it, and this run's new labels are added as it commits. "
        "Example: --label-cache s3://lake/label-cache/",
    ),
    click.option(
        "--run-id",
        metavar="ID",
        help="Name the run (manifest, lock, logs). Default: generated. Rerunning a committed run's id exits 0 "
        "without redoing it, so a retried scheduled job is harmless. Example: --run-id 2026-11-24",
    ),
    *LOG_OPTIONS,
]


@dataclass(frozen=True, kw_only=True)
class SpecSource:
    """Where a command's job spec comes from besides its flags: ``--spec``, ``--param``, ``--run-date``."""

    file: str | None
    params: dict[str, str]
    run_date: str | None

    def spec(self, flags: dict[str, Any]) -> JobSpec:
        """The JobSpec: the spec file, the flags given on the command line over it, placeholders
        filled (:func:`batchnlp.job_spec`)."""
        from batchnlp.api import job_spec

        settings = given_settings(click.get_current_context(), flags)
        return job_spec(self.file, params=self.params, run_date=self.run_date, **settings)


def sourced(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` given ``--spec``, ``--param`` and ``--run-date`` as one ``source: SpecSource``."""

    @functools.wraps(command)
    def with_source(*args: Any, spec_file: str | None, param: Any, run_date: str | None, **kwargs: Any) -> Any:
        return command(*args, source=SpecSource(file=spec_file, params=dict(param), run_date=run_date), **kwargs)

    return with_source


def job_options(command: Any) -> Any:
    """Decorate ``command`` with :data:`JOB_OPTIONS`, in the order ``--help`` lists them; it
    receives the spec's source as ``source`` and the log options as ``log``."""
    return with_options(JOB_OPTIONS, sourced(logged(command)))


def given_settings(ctx: click.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line (or by their environment variable), as spec settings."""
    settings: dict[str, Any] = {}
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if source not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) or value in ((), None):
            continue
        if name in ("model", "cascade", "storage_option", "catalog_option"):
            value = dict(value)
        elif name == "task":
            value = list(value)
        settings[SETTING_NAMES.get(name, name)] = value
    return settings
