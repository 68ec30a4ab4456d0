"""JobSpec: one validated, immutable description of a job, from flags and/or a YAML file.

Every problem is collected and reported together before any work starts, so a user fixes a
spec in one round instead of discovering its errors one run at a time. A spec file is read by
:mod:`.load`; flags (or keyword arguments) go over it in :mod:`.merge`; this module validates.

May import: :mod:`batchnlp.tasks` (the registry of task kinds it validates names against),
:mod:`batchnlp.io` (the format and table registries), :mod:`batchnlp.util`, :mod:`batchnlp.errors`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from batchnlp.errors import SpecError
from batchnlp.inference.backends import Backend
from batchnlp.io import formats, paths
from batchnlp.io.formats import COMPRESSIONS, DEFAULT_COMPRESSION
from batchnlp.io.formats.base import DEFAULT_MAX_LINE_BYTES, BadLinePolicy, ReadOptions
from batchnlp.io.formats.decompress import DEFAULT_MAX_DECOMPRESSED_BYTES
from batchnlp.io.formats.writers import OutputFormat
from batchnlp.io.tables import TABLES
from batchnlp.io.worker_credentials import public_options
from batchnlp.util.redaction import redact_url

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
TABLE_FORMATS = tuple(TABLES)  # batchnlp.io.tables: a run's Parquet files, then one table commit
# What --input-format/--output-format/--compression take: the file format registry's, and the tables.
INPUT_FORMATS = (*formats.INPUT_FORMATS, *TABLE_FORMATS)
OUTPUT_FORMATS = (*formats.OUTPUT_FORMATS, *TABLE_FORMATS)
COMPRESSION_NAMES = tuple(dict.fromkeys(name for names in COMPRESSIONS.values() for name in names))
WriteMode = Literal["new", "overwrite", "resume"]

BYTE_UNITS = {"": 0, "b": 0, "kib": 10, "mib": 20, "gib": 30, "tib": 40}
BYTE_SIZE = re.compile(r"([1-9][0-9]*) ?([KMGT]iB|B|)", re.IGNORECASE)
RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RUN_ID_RULE = "1-128 of letters, digits and . _ : -, not . or .. (it names a folder)"
TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.[A-Za-z0-9_-]+")  # namespace.table, in a catalog
DEFAULT_CATALOG = "default"
TLS_SETTINGS = ("tls_ca_file", "tls_cert", "tls_key")  # --scheduler tls://...: files of the user's cluster
DEFAULT_MAX_ANSWER_LENGTH = 15  # tokens, as transformers' question-answering pipeline
QA_KEYS = ("question", "question_column", "doc_stride", "max_answer_length", "allow_no_answer")
CASCADE_KEYS = ("cascade", "cascade_margin")  # a task's student ref and margin (job level: cascade maps TASK: REF)
ZERO_SHOT_KEYS = ("labels", "hypothesis", "multi_label")  # zero-shot: its candidate labels, template and scoring
EMBED_KEYS = ("embed_dtype", "chunk_tokens", "chunk_stride")  # embed: the float type; long texts as chunks
NER_KEYS = ("aggregation", "entities", "redact")  # ner: how tokens become entities, which are kept, --redact
TASK_KEYS = (
    "name", "task", "model", "top_k", "keep_probs", *QA_KEYS, *CASCADE_KEYS, *EMBED_KEYS, *NER_KEYS, *ZERO_SHOT_KEYS,
)  # fmt: skip
# The least value of each integer setting, for the spec and the CLI's options alike. A window
# or a batch of fewer than 8 tokens holds little beyond [CLS] and [SEP].
MINIMUMS = {
    "rows_per_partition": 1,
    "workers": 1,
    "max_length": 8,
    "tokens_per_batch": 8,
    "top_k": 1,
    "doc_stride": 0,
    "max_answer_length": 1,
    "chunk_tokens": 8,
    "chunk_stride": 0,
    "table_version": 0,
}


@dataclass(frozen=True)
class TaskSpec:
    """One annotation: ``kind`` picks the task code, ``name`` the output column."""

    name: str
    kind: str
    model: str
    top_k: int | None = None
    # qa only: a fixed question or the column holding each row's question (exactly one), and
    # how contexts are windowed and answers bounded (None: derived from --max-length).
    question: str | None = None
    question_column: str | None = None
    doc_stride: int | None = None
    max_answer_length: int | None = None
    allow_no_answer: bool = False
    # classify/sentiment: also write every label's probability (probs), as ``batchnlp distill`` needs
    keep_probs: bool = False
    # classify/sentiment: a cascade. This student model (any ref ``model`` takes) labels every row first; the
    # rows whose best two student scores are closer than ``cascade_margin`` are labelled by ``model`` (the
    # teacher) instead (batchnlp.tasks.classify). None: no cascade. From settings, the margin's default
    # (batchnlp.tasks.DEFAULT_CASCADE_MARGIN) is filled in, so the fingerprint holds the margin a run used.
    student: str | None = None
    cascade_margin: float | None = None
    # embed only: the embeddings' float type, float32 or float16 (--embed-dtype); None for other tasks.
    embed_dtype: str | None = None
    # embed only: a text cut into windows of chunk_tokens tokens (special tokens included), consecutive
    # windows sharing chunk_stride tokens, one embedding per window (batchnlp.tasks.embed). None: one per text.
    chunk_tokens: int | None = None
    chunk_stride: int | None = None
    # ner only: how token labels become entities (simple|first|average|max|none, as transformers' token-classification
    # pipeline's aggregation_strategy; filled in as simple), which entity groups are kept (None: all) and whether
    # the text is also written with each kept entity replaced by [TYPE] (a <name>_redacted column).
    aggregation: str | None = None
    entities: tuple[str, ...] | None = None
    redact: bool = False
    # zero-shot only: the candidate labels (required), the hypothesis template ({} is the label; from settings
    # the pipeline's default is filled in) and whether labels are scored independently (--multi-label).
    labels: tuple[str, ...] | None = None
    hypothesis: str | None = None
    multi_label: bool = False


# TaskSpec settings added after fingerprints were first recorded: left out of a fingerprint at their
# defaults, so a run from before them still resumes (new settings join this tuple).
LATER_TASK_SETTINGS = ("keep_probs", "student", *EMBED_KEYS, *NER_KEYS, *ZERO_SHOT_KEYS)
TASK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TaskSpec)}


@dataclass(frozen=True)
class JobSpec:
    """Everything a run needs, validated. Build it with :meth:`from_settings`."""

    input: str
    output: str
    tasks: tuple[TaskSpec, ...]
    input_format: str | None = None  # one of INPUT_FORMATS; None: from the file names
    text_column: str = "text"
    id_column: str | None = None
    on_bad_lines: BadLinePolicy = "stop"
    output_format: str = "parquet"  # one of OUTPUT_FORMATS
    compression: str | None = None  # None: the output format's default (zstd for Parquet)
    partition_by: tuple[str, ...] = ()  # Hive-partitioned output: OUTPUT/COL=value/.../part-NNNNN.<suffix>
    rows_per_partition: int | None = None  # None: sized from the input and the worker count
    scheduler: str | None = None
    # --scheduler tls://...: the cluster's CA, this client's certificate and key (PEM files); unset:
    # Dask's own distributed.comm.tls config (batchnlp.cluster.tls)
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int | None = None
    device: Device = "auto"
    precision: Precision = "auto"
    backend: Backend = "auto"  # what runs the forward pass (batchnlp.inference.backends)
    max_length: int | None = None
    tokens_per_batch: int | None = None  # None: the engine's default for the device
    # int8: a row whose top-2 score margin is below this is rescored in fp32 (inference.engine). None: the default.
    rescore_margin: float | None = None
    storage_options: Mapping[str, str] = field(default_factory=dict)
    mode: WriteMode = "new"
    break_lock: bool = False  # take OUTPUT even if another run's lock says it is writing there
    incremental: bool = False  # label only input files no committed run at OUTPUT read (batchnlp.execution.incremental)
    dedup: bool = True  # label each distinct input once per run (batchnlp.execution.distinct)
    label_cache: str | None = None  # a label cache's URL: known inputs served from it (batchnlp.ledger.label_cache)
    run_id: str | None = None  # names the run; None: generated. A committed run of this id is not redone.
    catalog: str = DEFAULT_CATALOG  # Iceberg: the pyiceberg catalog holding INPUT/OUTPUT tables
    catalog_options: Mapping[str, str] = field(default_factory=dict)  # its properties, over its configuration
    table_version: int | None = None  # Delta/Iceberg input: read this version / snapshot id, not the latest
    # Bad input lines (--on-bad-lines skip|quarantine) a run may have and still commit: a count, or a
    # fraction (0 < f < 1) of the input's lines. None: any number.
    max_bad_lines: int | float | None = None
    # A longer JSONL line (or Parquet cell) is a bad line (a rejected row); a compressed file
    # decompressing past this (or 1000x its size, past 4 GiB) is refused from there (batchnlp.io.formats.decompress).
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    grace_seconds: float = 20.0  # after SIGTERM, running units get this long to finish (batchnlp.execution.shutdown)
    unit_timeout: float | None = (
        None  # a unit silent this long is rerun elsewhere; None: derived (batchnlp.execution.collect)
    )
    lock_owner: str | None = None  # the job this run belongs to, when no scheduler variable says (batchnlp.ledger.lock)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> JobSpec:
        """Validate a flat settings mapping (YAML keys or CLI option names) into a JobSpec.

        Raises one :class:`SpecError` listing every problem found.
        """
        problems: list[str] = []
        s = {key.replace("-", "_"): value for key, value in settings.items() if value is not None}
        extra = {"models", "top_k", "keep_probs", "overwrite", "resume", *QA_KEYS, *CASCADE_KEYS, *EMBED_KEYS}
        extra |= set(NER_KEYS)
        extra |= set(ZERO_SHOT_KEYS)
        known = {f.name for f in dataclasses.fields(cls)} | extra
        for key in sorted(set(s) - known):
            problems.append(f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}")

        for key in ("input", "output"):
            if not isinstance(s.get(key), str) or not s[key].strip():
                problems.append(f"{key} is required (a path, glob or URL such as s3://bucket/prefix/)")
        tasks = _tasks_from_settings(s, problems)
        mode = _write_mode(s, problems)
        values: dict[str, Any] = {}
        choices = {
            "input_format": INPUT_FORMATS,
            "on_bad_lines": get_args(BadLinePolicy),
            "device": get_args(Device),
            "precision": get_args(Precision),
            "backend": get_args(Backend),
            "output_format": OUTPUT_FORMATS,
        }
        for name, allowed in choices.items():
            if name in s:
                values[name] = _choice(name, s[name], allowed, problems)
        values["compression"] = _compression(values.get("output_format", "parquet"), s.get("compression"), problems)
        _table_settings(s, values, mode, problems)
        for name in ("rows_per_partition", "workers", "max_length", "tokens_per_batch"):
            if name in s:
                values[name] = _integer(name, s[name], problems, MINIMUMS[name])
        for name in ("text_column", "id_column", "scheduler", *TLS_SETTINGS):
            if name in s:
                if isinstance(s[name], str) and s[name]:
                    values[name] = s[name]
                else:
                    problems.append(f"{name} must be a non-empty string, got {s[name]!r}")
        tls = [name for name in TLS_SETTINGS if name in values]
        if tls and not values.get("scheduler", "").startswith("tls://"):
            problems.append(f"{', '.join(tls)} secure a connection to a scheduler at a tls:// address; give one")
        if "run_id" in s:
            if valid_run_id(s["run_id"]):
                values["run_id"] = s["run_id"]
            else:
                problems.append(f"run_id must be {RUN_ID_RULE}, got {s['run_id']!r}")
        if "partition_by" in s:
            values["partition_by"] = _partition_by(s["partition_by"], tasks, problems)
        if "max_bad_lines" in s:
            values["max_bad_lines"] = _bad_line_limit(s["max_bad_lines"], problems)
        for name in ("max_line_bytes", "max_decompressed_bytes"):
            if name in s:
                values[name] = _byte_size(name, s[name], problems)
        for name in ("grace_seconds", "unit_timeout"):
            if name in s:
                values[name] = _seconds(name, s[name], problems)
        if "rescore_margin" in s:
            margin = s["rescore_margin"]
            if isinstance(margin, int | float) and not isinstance(margin, bool) and 0 <= margin < 1:
                values["rescore_margin"] = float(margin)
            else:
                problems.append(f"rescore_margin must be a score margin from 0 (never) to below 1, got {margin!r}")
        if "lock_owner" in s:
            if isinstance(s["lock_owner"], str) and RUN_ID.fullmatch(s["lock_owner"]):
                values["lock_owner"] = s["lock_owner"]
            else:
                problems.append(f"lock_owner must be 1-128 of letters, digits and . _ : -, got {s['lock_owner']!r}")
        if "incremental" in s:
            if not isinstance(s["incremental"], bool):
                problems.append(f"incremental must be true or false, got {s['incremental']!r}")
            elif s["incremental"] and mode == "overwrite":
                problems.append("--incremental adds a run beside the earlier ones; --overwrite would delete them")
            else:
                values["incremental"] = s["incremental"]
        if "dedup" in s:
            if isinstance(s["dedup"], bool):
                values["dedup"] = s["dedup"]
            else:
                problems.append(f"dedup must be true or false, got {s['dedup']!r}")
        if "label_cache" in s:
            if not isinstance(s["label_cache"], str) or not s["label_cache"].strip():
                problems.append(
                    f"label_cache must be a path or URL such as s3://lake/label-cache/, got {s['label_cache']!r}"
                )
            elif values.get("dedup") is False:
                problems.append(
                    "label_cache looks up each distinct input, which --no-dedup turns off; drop one of them"
                )
            else:
                values["label_cache"] = s["label_cache"]
        if "break_lock" in s:
            if isinstance(s["break_lock"], bool):
                values["break_lock"] = s["break_lock"]
            else:
                problems.append(f"break_lock must be true or false, got {s['break_lock']!r}")
        options = s.get("storage_options", {})
        if not isinstance(options, Mapping):
            problems.append("storage_options must be a mapping of fsspec option names to values")
            options = {}
        if values.get("precision") == "fp16" and values.get("device") == "cpu":
            problems.append("precision fp16 needs a CUDA device; on CPU use bf16 or int8")
        if values.get("precision") == "int8" and values.get("device") == "cuda":
            problems.append("precision int8 (dynamic quantisation) runs on CPU only; on CUDA use bf16 or fp16")
        if values.get("backend") == "onnxruntime" and (
            values.get("device") == "cuda" or values.get("precision") in ("bf16", "fp16")
        ):
            problems.append("backend onnxruntime runs on CPU in fp32 or int8; use backend torch (or auto) there")
        inputs = {s.get("text_column", "text"), "_error", *(t.question_column for t in tasks if t.question_column)}
        reserved = {t.name for t in tasks} & inputs
        for name in sorted(reserved):
            problems.append(f"task name {name!r} clashes with an input or reserved column; rename the task")
        if not problems:  # where the job reads and writes: only once both are known good
            named = tuple(_named_table(s.get(f"{key}_format")) for key in ("input", "output"))
            problems += paths.problems(s["input"], s["output"], named, mode)
            if values.get("label_cache"):
                problems += paths.cache_problems(values["label_cache"], s["input"], s["output"], named)
        if problems:
            raise SpecError("invalid job spec:\n  - " + "\n  - ".join(problems))
        return cls(
            input=s["input"],
            output=s["output"],
            tasks=tuple(tasks),
            storage_options=dict(options),
            mode=mode,
            **values,
        )

    @property
    def read_options(self) -> ReadOptions:
        return ReadOptions(
            self.text_column,
            self.on_bad_lines,
            max_line_bytes=self.max_line_bytes,
            max_decompressed_bytes=self.max_decompressed_bytes,
        )

    @property
    def table_output(self) -> bool:
        return self.output_format in TABLE_FORMATS

    @property
    def output_options(self) -> OutputFormat:
        """How part files are written: a table's data files are Parquet."""
        fmt = "parquet" if self.table_output else self.output_format
        return OutputFormat(fmt, self.compression or DEFAULT_COMPRESSION[fmt])

    def fingerprint(self) -> str:
        """A hash of what the output depends on, so ``--resume`` can refuse a changed job."""
        relevant = dataclasses.asdict(self)
        volatile = (
            "scheduler",
            "workers",
            "storage_options",
            "mode",
            "break_lock",
            "run_id",
            "catalog_options",
            "label_cache",  # where known labels come from: the same labels either way
        )
        # How a run is supervised changes no output byte: a retry may change these and still resume.
        supervision = ("max_bad_lines", "grace_seconds", "unit_timeout", "lock_owner")
        for name in (*volatile, *TLS_SETTINGS, *supervision):
            relevant.pop(name)
        for task in relevant["tasks"]:
            if task["student"] is None:  # a margin without a cascade changes nothing
                task.pop("cascade_margin")
            for later in LATER_TASK_SETTINGS:  # at their defaults, runs from before them keep their fingerprints
                if task[later] == TASK_DEFAULTS[later]:
                    task.pop(later)
        # Added later: runs that do not use them keep the fingerprints they had.
        for later, unset in (
            ("partition_by", ()),
            ("catalog", DEFAULT_CATALOG),
            ("table_version", None),
            ("rescore_margin", None),
            ("incremental", False),
            ("dedup", True),
            ("max_line_bytes", DEFAULT_MAX_LINE_BYTES),
            ("max_decompressed_bytes", DEFAULT_MAX_DECOMPRESSED_BYTES),
        ):
            if relevant[later] == unset:
                relevant.pop(later)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (inside a Dask task), a spec leaves its credential storage options behind: the
        embedded cluster's workers get them from their environment (batchnlp.io.worker_credentials)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["storage_options"] = public_options(self.storage_options)
        return (type(self), tuple(values.values()))

    def redacted(self) -> dict[str, Any]:
        """The spec as JSON-ready data with storage option values hidden (for the manifest)."""
        data = dataclasses.asdict(self)
        data["input"] = redact_url(self.input)
        data["output"] = redact_url(self.output)
        data["label_cache"] = redact_url(self.label_cache) if self.label_cache else None
        data["storage_options"] = {key: "***" for key in self.storage_options}
        data["catalog_options"] = {key: "***" for key in self.catalog_options}
        for task in data["tasks"]:
            task["model"] = redact_url(task["model"])
            if task["student"] is not None:
                task["student"] = redact_url(task["student"])
        return data

    def settings(self) -> dict[str, Any]:
        """Settings that :meth:`from_settings` turns back into this spec, less its storage and catalog
        options (credentials: a command gives them again) and with credentials cut from its URLs.

        What a sharded run stores with its plan, so that ``batchnlp commit OUTPUT --run-id ID``
        knows the job without its spec file.
        """
        data = {key: value for key, value in self.redacted().items() if value is not None}
        for key in ("storage_options", "catalog_options"):
            data.pop(key)
        data["partition_by"] = list(self.partition_by)
        data["tasks"] = [
            {
                "name": task.pop("name"),
                "task": task.pop("kind"),
                **({"cascade": task.pop("student")} if task["student"] is not None else {}),
                **{key: value for key, value in task.items() if value not in (None, False)},
            }
            for task in data["tasks"]
        ]
        return data


def valid_run_id(value: Any) -> bool:
    """A run id names a folder (a table's staging directory, an incremental run's): see :data:`RUN_ID_RULE`."""
    return isinstance(value, str) and bool(RUN_ID.fullmatch(value)) and value not in (".", "..")


def _tasks_from_settings(s: Mapping[str, Any], problems: list[str]) -> list[TaskSpec]:
    """Tasks come as names (``[sentiment, classify]``) or mappings with name/task/model/top_k."""
    from batchnlp.tasks import TASKS, column_names

    raw = s.get("tasks") or ["sentiment"]
    if isinstance(raw, str):
        raw = [raw]
    models = s.get("models") or {}
    if not isinstance(models, Mapping):
        problems.append("models must map task names to model refs (TASK=REF)")
        models = {}
    students = s.get("cascade") or {}
    if not isinstance(students, Mapping):
        problems.append("cascade must map task names to student model refs (--cascade TASK=STUDENT_REF)")
        students = {}
    default_top_k = s.get("top_k")
    tasks: list[TaskSpec] = []
    for entry in raw:
        item = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(item, Mapping) or not isinstance(item.get("name", item.get("task")), str):
            problems.append(f"a task must be a name or a mapping with 'name', got {entry!r}")
            continue
        name = item.get("name", item.get("task"))
        for key in sorted(set(item) - set(TASK_KEYS)):
            problems.append(f"task {name!r} has an unknown key {key!r}; task keys: {', '.join(TASK_KEYS)}")
        kind = item.get("task", name)
        if kind not in TASKS:
            problems.append(f"unknown task {kind!r}; available tasks: {', '.join(sorted(TASKS))}")
            continue
        model = models.get(name) or item.get("model") or TASKS[kind].default_model
        if not model:
            problems.append(f"task {name!r} needs a model: pass --model {name}=HUB_ID|PATH|s3://PREFIX")
            continue
        top_k = item.get("top_k", default_top_k if TASKS[kind].supports_top_k else None)
        if top_k is not None:
            if not TASKS[kind].supports_top_k:
                problems.append(f"task {name!r} ({kind}) does not take top_k")
            top_k = _integer(f"top_k of task {name!r}", top_k, problems, MINIMUMS["top_k"])
        qa = _qa_settings(name, kind, item, s, problems)
        keep_probs = _keep_probs(name, kind, item, s, problems)
        cascade = _cascade(name, kind, item, students, s, problems)
        embed = _embed_settings(name, kind, item, s, problems)
        ner = _ner_settings(name, kind, item, s, problems)
        zero_shot = _zero_shot_settings(name, kind, item, s, problems)
        tasks.append(
            TaskSpec(
                name=name,
                kind=kind,
                model=str(model),
                top_k=top_k,
                keep_probs=keep_probs,
                **qa,
                **cascade,
                **embed,
                **ner,
                **zero_shot,
            )
        )
    names = [t.name for t in tasks]
    given = [key for key in QA_KEYS if key in s]
    if given and not any(TASKS[t.kind].takes_question for t in tasks):
        problems.append(f"{', '.join(given)} apply to qa tasks only, and this job has none (add --task qa)")
    given = [key for key in EMBED_KEYS if key in s]
    if given and not any(TASKS[t.kind].embeds for t in tasks):
        verb = "applies" if len(given) == 1 else "apply"
        problems.append(f"{', '.join(given)} {verb} to embed tasks only, and this job has none (add --task embed)")
    ner_given = [key for key in NER_KEYS if key in s]
    if ner_given and not any(TASKS[t.kind].names_entities for t in tasks):
        problems.append(f"{', '.join(ner_given)} apply to ner tasks only, and this job has none (add --task ner)")
    if s.get("keep_probs") and not any(TASKS[t.kind].keeps_probs for t in tasks):
        problems.append("keep_probs applies to classify, sentiment and zero-shot tasks only, and this job has none")
    given = [key for key in ZERO_SHOT_KEYS if key in s]
    if given and not any(TASKS[t.kind].takes_labels for t in tasks):
        problems.append(
            f"{', '.join(given)} apply to zero-shot tasks only, and this job has none (add --task zero-shot)"
        )
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"task {name!r} is given twice; give each task a distinct name in a job spec")
    spread = {column: t.name for t in tasks for column in column_names(t)[1:]}  # ner --redact: <name>_redacted
    for name in sorted(set(names) & set(spread)):
        problems.append(
            f"task {name!r} has the name of a column task {spread[name]!r} writes beside its own; give it another "
            "name in a job spec"
        )
    for name in sorted(set(models) - set(names)):
        problems.append(f"--model {name}=... names no task of this job (tasks: {', '.join(names)})")
    for name in sorted(set(students) - set(names)):
        problems.append(f"--cascade {name}=... names no task of this job (tasks: {', '.join(names)})")
    if "cascade_margin" in s and not any(t.student for t in tasks):
        problems.append(
            "cascade_margin applies to tasks with a cascade (--cascade TASK=STUDENT_REF), and this job has none"
        )
    return tasks


def _cascade(
    name: str, kind: str, item: Mapping[str, Any], students: Mapping[str, Any], s: Mapping[str, Any], problems: list
) -> dict[str, Any]:
    """A task's student (the job's ``cascade`` mapping, else its own ``cascade`` key) and margin (its own
    ``cascade_margin``, else the job's, else :data:`batchnlp.tasks.DEFAULT_CASCADE_MARGIN`); refused for a task that
    has no label scores to compare (qa)."""
    from batchnlp.tasks import DEFAULT_CASCADE_MARGIN, TASKS

    student = students.get(name, item.get("cascade"))
    if student is None:
        if "cascade_margin" in item:
            problems.append(
                f"cascade_margin of task {name!r} applies to a cascade: give its student with cascade: REF "
                f"(--cascade {name}=STUDENT_REF)"
            )
        return {}
    if not TASKS[kind].cascades:
        cascading = " and ".join(sorted(k for k, info in TASKS.items() if info.cascades))
        problems.append(
            f"task {name!r} ({kind}) does not take a cascade: only {cascading} tasks do (the student hands the "
            "teacher the rows whose best two label scores are close)"
        )
        return {}
    if not isinstance(student, str) or not student.strip():
        problems.append(f"the cascade's student of task {name!r} must be a model ref, got {student!r}")
        return {}
    margin = item.get("cascade_margin", s.get("cascade_margin", DEFAULT_CASCADE_MARGIN))
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
        problems.append(
            f"cascade_margin of task {name!r} must be a score margin from 0 (the student labels every row) to "
            f"below 1, got {margin!r}"
        )
        return {}
    return {"student": student, "cascade_margin": float(margin)}


def _refuse_keys(
    name: str, kind: str, item: Mapping[str, Any], keys: tuple[str, ...], owner: str, problems: list[str]
) -> None:
    """Each of ``keys`` in task ``name``'s own mapping is a problem: only ``owner`` tasks take them."""
    for key in sorted(set(keys) & set(item)):
        problems.append(f"task {name!r} ({kind}) does not take {key}; only {owner} tasks do")


def _embed_settings(name: str, kind: str, item: Mapping[str, Any], s: Mapping[str, Any], problems: list[str]) -> dict:
    """An embed task's embed_dtype and chunking, each its own key, else the job's (embed_dtype: float32;
    no chunking); refused for other tasks."""
    from batchnlp.tasks import TASKS
    from batchnlp.tasks.columns import EMBED_DTYPES

    if not TASKS[kind].embeds:
        _refuse_keys(name, kind, item, EMBED_KEYS, "embed", problems)
        return {}
    value = item.get("embed_dtype", s.get("embed_dtype", "float32"))
    if value not in EMBED_DTYPES:
        problems.append(f"embed_dtype of task {name!r} must be one of {', '.join(EMBED_DTYPES)}, got {value!r}")
        value = "float32"
    chunking = {key: item.get(key, s.get(key)) for key in ("chunk_tokens", "chunk_stride")}
    for key, number in chunking.items():
        if number is not None:
            chunking[key] = _integer(f"{key} of task {name!r}", number, problems, MINIMUMS[key])
    tokens, stride = chunking["chunk_tokens"], chunking["chunk_stride"]
    if stride is not None and tokens is None:
        problems.append(f"chunk_stride of task {name!r} applies to chunks: give their length with chunk_tokens")
    elif tokens is not None and stride is not None and stride >= tokens - 2:
        problems.append(
            f"chunk_stride of task {name!r} must be smaller than chunk_tokens less [CLS] and [SEP] ({tokens - 2}), "
            f"got {stride}: consecutive chunks would not move forward"
        )
    return {"embed_dtype": value, **chunking}


def _ner_settings(name: str, kind: str, item: Mapping[str, Any], s: Mapping[str, Any], problems: list[str]) -> dict:
    """A ner task's aggregation, entities and redact: its own keys, else the job's; refused for other tasks."""
    from batchnlp.tasks import AGGREGATIONS, DEFAULT_AGGREGATION, TASKS

    if not TASKS[kind].names_entities:
        _refuse_keys(name, kind, item, NER_KEYS, "ner", problems)
        return {}
    value = {key: item.get(key, s.get(key)) for key in NER_KEYS}
    aggregation = DEFAULT_AGGREGATION if value["aggregation"] is None else value["aggregation"]
    if aggregation not in AGGREGATIONS:
        problems.append(
            f"aggregation of task {name!r} must be one of {', '.join(AGGREGATIONS)} (as transformers' "
            f"token-classification pipeline's aggregation_strategy), got {aggregation!r}"
        )
    entities = value["entities"]
    if isinstance(entities, str):
        entities = [part.strip() for part in entities.split(",")]
    if entities is not None:
        names = isinstance(entities, list | tuple) and all(isinstance(e, str) and e for e in entities)
        if not names or not entities:
            problems.append(
                f"entities of task {name!r} must be entity group names, a list or comma-separated "
                f"(--entities PER,LOC), got {value['entities']!r}"
            )
            entities = None
        else:
            entities = tuple(sorted(set(entities)))
    redact = False if value["redact"] is None else value["redact"]
    if not isinstance(redact, bool):
        problems.append(f"redact of task {name!r} must be true or false, got {redact!r}")
        redact = False
    return {"aggregation": aggregation, "entities": entities, "redact": redact}


def _zero_shot_settings(
    name: str, kind: str, item: Mapping[str, Any], s: Mapping[str, Any], problems: list[str]
) -> dict[str, Any]:
    """A zero-shot task's labels, hypothesis and multi_label: its own keys, else the job's; refused for
    other tasks. Labels come as a list, or as one comma-separated string (``--labels "a,b,c"``, each
    stripped, as the pipeline splits them); none may be empty or given twice."""
    from batchnlp.tasks import DEFAULT_HYPOTHESIS, TASKS

    if not TASKS[kind].takes_labels:
        _refuse_keys(name, kind, item, ZERO_SHOT_KEYS, "zero-shot", problems)
        return {}
    value = {key: item.get(key, s.get(key)) for key in ZERO_SHOT_KEYS}
    labels = value["labels"]
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",")]
    if labels is None:
        problems.append(
            f'task {name!r} (zero-shot) needs its candidate labels: --labels "sports,politics,tech" '
            "(labels: [sports, politics, tech] in a job spec)"
        )
        labels = []
    elif not isinstance(labels, list | tuple) or not all(isinstance(label, str) for label in labels):
        problems.append(
            f"labels of task {name!r} must be a list of strings or one comma-separated string, got {labels!r}"
        )
        labels = []
    elif not labels or any(not label.strip() for label in labels):
        problems.append(
            f"labels of task {name!r} has an empty label ({labels!r}): give each label as a non-empty string "
            '(a label holding a comma goes in a job spec\'s list: labels: ["a, b", c])'
        )
    else:
        for label in sorted({label for label in labels if labels.count(label) > 1}):
            problems.append(f"labels of task {name!r} give {label!r} twice; give each label once")
    hypothesis = DEFAULT_HYPOTHESIS if value["hypothesis"] is None else value["hypothesis"]
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        problems.append(f"hypothesis of task {name!r} must be a template such as 'This text is about {{}}.', got "
                        f"{hypothesis!r}")  # fmt: skip
    else:
        try:
            filled = hypothesis.format("LABEL")
        except (IndexError, KeyError, ValueError) as e:
            filled = None
            reason = f"it does not format with one label ({type(e).__name__}: {e}); write literal braces as {{{{ }}}}"
        else:
            reason = "it has no {} where the label goes"
        if filled is None or filled == hypothesis:
            problems.append(
                f"hypothesis of task {name!r} ({hypothesis!r}) must hold {{}} where the label goes, as "
                f"'This text is about {{}}.': {reason}"
            )
    multi_label = False if value["multi_label"] is None else value["multi_label"]
    if not isinstance(multi_label, bool):
        problems.append(f"multi_label of task {name!r} must be true or false, got {multi_label!r}")
    return {"labels": tuple(labels), "hypothesis": hypothesis, "multi_label": multi_label is True}


def _keep_probs(name: str, kind: str, item: Mapping[str, Any], s: Mapping[str, Any], problems: list[str]) -> bool:
    """A classifier's keep_probs: its own key, else the job's; refused for a task without label probabilities (qa)."""
    from batchnlp.tasks import TASKS

    value = item.get("keep_probs", s.get("keep_probs", False) if TASKS[kind].keeps_probs else False)
    if not isinstance(value, bool):
        problems.append(f"keep_probs of task {name!r} must be true or false, got {value!r}")
        return False
    if value and not TASKS[kind].keeps_probs:
        problems.append(f"task {name!r} ({kind}) does not take keep_probs: only classify, sentiment and zero-shot do")
    return value


def _qa_settings(name: str, kind: str, item: Mapping[str, Any], s: Mapping[str, Any], problems: list[str]) -> dict:
    """A qa task's question and span settings: its own keys, else the job-level ones.

    A task that names its own question or question column replaces both job-level ones, so a
    spec can set ``question_column`` for most tasks and a fixed ``question`` for one.
    """
    from batchnlp.tasks import TASKS

    if not TASKS[kind].takes_question:
        _refuse_keys(name, kind, item, QA_KEYS, "qa", problems)
        return {}
    defaults = {key: s.get(key) for key in QA_KEYS}
    if "question" in item or "question_column" in item:
        defaults.update(question=None, question_column=None)
    value = {key: item.get(key, defaults[key]) for key in QA_KEYS}
    if (value["question"] is None) == (value["question_column"] is None):
        problems.append(
            f"task {name!r} (qa) needs exactly one of question (--question TEXT) or question_column "
            "(--question-column NAME)"
        )
    for key in ("question", "question_column"):
        if value[key] is not None and not (isinstance(value[key], str) and value[key].strip()):
            problems.append(f"{key} of task {name!r} must be a non-empty string, got {value[key]!r}")
    if value["doc_stride"] is not None:
        stride_name = f"doc_stride of task {name!r}"
        value["doc_stride"] = _integer(stride_name, value["doc_stride"], problems, MINIMUMS["doc_stride"])
        stride, window = value["doc_stride"], s.get("max_length")
        if isinstance(stride, int) and isinstance(window, int) and stride >= window:
            problems.append(f"doc_stride of task {name!r} must be less than max_length ({s['max_length']})")
    if value["max_answer_length"] is None:
        value["max_answer_length"] = DEFAULT_MAX_ANSWER_LENGTH
    answer_name = f"max_answer_length of task {name!r}"
    _integer(answer_name, value["max_answer_length"], problems, MINIMUMS["max_answer_length"])
    if value["allow_no_answer"] is None:
        value["allow_no_answer"] = False
    if not isinstance(value["allow_no_answer"], bool):
        problems.append(f"allow_no_answer of task {name!r} must be true or false, got {value['allow_no_answer']!r}")
    return value


def _partition_by(value: Any, tasks: list[TaskSpec], problems: list[str]) -> tuple[str, ...]:
    """Column names, in order; not a task's output column or _error (they are not known before the run)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
        problems.append(f"partition_by must be a column name or a list of them, got {value!r}")
        return ()
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"partition_by names column {name!r} twice")
    computed = {t.name for t in tasks} | {"_error"}
    for name in [n for n in names if n in computed]:
        what = "_error" if name == "_error" else f"task {name!r}'s output column"
        problems.append(
            f"cannot partition by {what}: a partition column must come from the input "
            "(its columns or its own key=value directories)"
        )
    return tuple(names)


def _write_mode(s: Mapping[str, Any], problems: list[str]) -> WriteMode:
    if s.get("overwrite") and s.get("resume"):
        problems.append("--overwrite and --resume exclude each other; pick one")
    if s.get("overwrite"):
        return "overwrite"
    if s.get("resume"):
        return "resume"
    return _choice("mode", s.get("mode", "new"), get_args(WriteMode), problems)


def _table_settings(s: Mapping[str, Any], values: dict[str, Any], mode: str, problems: list[str]) -> None:
    """Delta/Iceberg settings: table names, the catalog, --table-version, and what tables exclude."""
    tables = {key: TABLES[fmt] for key in ("input", "output") if (fmt := s.get(f"{key}_format")) in TABLES}
    for key, table in tables.items():
        if table.addressed_by == "name" and isinstance(s.get(key), str) and not TABLE_NAME.fullmatch(s[key]):
            problems.append(f"{key} of format {table.name} must be a table name namespace.table, got {s[key]!r}")
    if tables.get("output") and mode == "overwrite":
        problems.append("--overwrite does not apply to a table: each run appends once (one commit per run id)")
    output = tables.get("output")
    if output and not output.partition_by and s.get("partition_by"):
        partitioned = " or ".join(t.name for t in TABLES.values() if t.partition_by)
        problems.append(
            f"--partition-by does not apply to {output.title} output: partition the table itself, or use {partitioned}"
        )
    if "table_version" in s:
        if not tables.get("input"):
            versions = " or ".join(f"{t.title} {t.version_word}" for t in TABLES.values())
            problems.append(f"--table-version (a {versions}) needs --input-format {'|'.join(TABLES)}")
        values["table_version"] = _integer("table_version", s["table_version"], problems, MINIMUMS["table_version"])
    if "catalog" in s:
        if isinstance(s["catalog"], str) and s["catalog"]:
            values["catalog"] = s["catalog"]
        else:
            problems.append(f"catalog must be a catalog name, got {s['catalog']!r}")
    options = s.get("catalog_options", {})
    if isinstance(options, Mapping) and all(isinstance(k, str) for k in options):
        values["catalog_options"] = {k: str(v) for k, v in options.items()}
    else:
        problems.append("catalog_options must map catalog property names to values (--catalog-option KEY=VALUE)")


def _named_table(fmt: Any) -> str | None:
    """``fmt`` where it is a table format whose INPUT/OUTPUT is a name in a catalog, not a place."""
    return fmt if fmt in TABLES and TABLES[fmt].addressed_by == "name" else None


def _compression(fmt: str, value: Any, problems: list[str]) -> str | None:
    """The output format's compression: given and valid for it, or its default (a table's: its Parquet files')."""
    fmt = "parquet" if fmt in TABLE_FORMATS else fmt
    if fmt not in COMPRESSIONS:
        return value  # the format itself is reported
    if value is None:
        return DEFAULT_COMPRESSION[fmt]
    if value not in COMPRESSIONS[fmt]:
        allowed = {name: "|".join(codecs) for name, codecs in COMPRESSIONS.items()}
        problems.append(
            f"compression {value!r} does not apply to output format {fmt}: parquet takes {allowed['parquet']}, "
            f"jsonl takes {allowed['jsonl']}, arrow is written uncompressed (none) so readers can memory-map it"
        )
    return value


def _bad_line_limit(value: Any, problems: list[str]) -> int | float | None:
    """A count of lines (``100``), a fraction of the input's lines (``0.01``) or a percentage (``"1%"``).

    A count is an int and a fraction a float, which is how the runner tells them apart.
    """
    text = value.strip() if isinstance(value, str) else None
    try:
        if text is not None and text.endswith("%") and 0 <= float(text[:-1]) <= 100:
            return float(text[:-1]) / 100
        number = float(text) if text is not None else value
    except ValueError:
        number = None
    is_number = isinstance(number, int | float) and not isinstance(number, bool) and number >= 0
    if is_number and (number < 1 or float(number).is_integer()):
        return number if isinstance(number, float) and number < 1 else int(number)
    problems.append(
        "max_bad_lines must be a number of lines (100), a fraction of the input's lines below 1 (0.01) "
        f"or a percentage (1%), got {value!r}"
    )
    return None


def _seconds(name: str, value: Any, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(f"{name} must be a positive number of seconds, got {value!r}")
        return 0.0
    return float(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...], problems: list[str]) -> Any:
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _byte_size(name: str, value: Any, problems: list[str]) -> int:
    """A positive number of bytes: an integer, or a string with a binary unit ("8MiB", "64 GiB")."""
    found = BYTE_SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if found:
        return int(found[1]) << BYTE_UNITS[found[2].lower()]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{name} must be a positive number of bytes (8388608, 8MiB, 64GiB), got {value!r}")
    return value


def _integer(name: str, value: Any, problems: list[str], minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        problems.append(f"{name} must be {what}, got {value!r}")
    return value
