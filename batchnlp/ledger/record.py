"""The typed run record: which job a run's parts belong to (:class:`JobRecord`), what a unit
produced (:class:`PartResult`), their sums (:class:`Totals`) and the commit record (:class:`Manifest`).

A unit's result travels from its worker to the driver, into a progress record (for
``--resume``) and into the manifest; the manifest is read back by ``inspect``, the report, the
CLI's summary and a table commit. One typed shape for each, read by attribute, so a field is
added or renamed in one place. ``to_record``/``from_record`` give the JSON files; their keys
are the files' format and stay stable (older manifests, missing later keys, still load).
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchnlp.io.formats.base import WorkUnit
from batchnlp.util.redaction import redact_url

MAX_EXAMPLES = 20  # rejected rows and bad lines the totals keep as examples


@dataclass(kw_only=True)
class JobRecord:
    """The job record, ``_progress/_job.json``: which job a run's parts belong to, written before any
    unit runs. ``--resume`` compares it with the job asked for, ``inspect`` describes an interrupted
    run from it, and ownership knows the names of the files its units write from it."""

    run_id: str
    spec_fingerprint: str  # JobSpec.fingerprint(): a changed spec cannot resume
    input_fingerprint: str  # Plan.fingerprint: nor can a changed input listing or unit layout
    # task name → its model's version (batchnlp.inference.models.check_ref); a cascade's student's under
    # "TASK (student)" (batchnlp.execution.cascade.student_key)
    model_versions: dict[str, str]
    rows_per_unit: int | None  # a resumed run cuts its units as the interrupted one did
    units: int | None  # how many units the plan has (for `batchnlp inspect`); None in an early record
    batchnlp_version: str | None
    spec: dict[str, Any]  # JobSpec.redacted()
    sharding: Sharding | None = None  # a sharded run's: stored with its plan, for `batchnlp commit`

    def to_record(self) -> dict[str, Any]:
        """The file's JSON: every field at the top level (a sharded run's as well), as batchnlp
        has always written it, so an interrupted run of an earlier version resumes."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sharding"}
        if self.sharding is None:
            return record
        sharding = dataclasses.asdict(self.sharding)
        if sharding["label_cache_version"] is None:  # added later: a run without a cache writes what it wrote before
            del sharding["label_cache_version"]
        return {**record, **sharding}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobRecord:
        """A job record as read back; keys an older batchnlp did not write take empty values. A record
        without a run id is none of batchnlp's: KeyError (an AttributeError for JSON that is no object)."""
        empty: dict[str, Any] = {"model_versions": {}, "spec": {}}
        values = {f.name: record.get(f.name, empty.get(f.name)) for f in dataclasses.fields(cls)}
        values["run_id"] = record["run_id"]
        values["sharding"] = Sharding.from_record(record) if "shards" in record else None
        return cls(**values)


@dataclass(kw_only=True)
class Sharding:
    """What a sharded run's job record adds: how ``batchnlp commit`` rebuilds the job and its figures."""

    shards: int
    settings: dict[str, Any]  # JobSpec.settings(): the job the commit step rebuilds
    planned_at: float  # wall clock: the run's figures span its shards, from this plan to the commit
    estimate: dict[str, Any] | None  # the plan's (batchnlp.execution.estimate), for the report
    label_cache_version: int | None = None  # --label-cache: the version every shard and the commit read

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sharding:
        return cls(**{f.name: record.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(kw_only=True)
class PartResult:
    """What one unit produced; small, so thousands of them travel back to the driver cheaply."""

    unit: WorkUnit
    part: str  # the part file's URL; empty when the unit held no rows and wrote nothing, or with --partition-by
    rows_in: int
    rows_out: int
    rejected: int
    reasons: dict[str, int]
    rejected_examples: list[dict[str, Any]]  # the first few: row in the part, id, reason
    tokens: int
    padded_tokens: int
    bytes: int
    sha256: str
    seconds: dict[str, float]
    device: str
    precision: str
    worker: str  # host:pid of the process that ran it, and when that process loaded its models
    models_loaded_at: float
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    oom_splits: int = 0  # batches halved after running out of device memory
    rescored: int = 0  # int8 rows too close to call, rescored in fp32
    # A cascade's task → the rows each of its models labelled: {"student": n, "teacher": n}
    labelled_by: dict[str, dict[str, int]] = field(default_factory=dict)
    students: dict[str, dict[str, str]] = field(default_factory=dict)  # a cascade's task → its student's weights
    backends: dict[str, str] = field(default_factory=dict)  # task name → what ran its model (onnxruntime, torch)
    export_seconds: float = 0.0  # the worker's time exporting models to ONNX as it loaded them; 0 when cached
    first_output_at: float | None = None  # wall clock when the unit's first rows were annotated
    bad_lines: int = 0  # source lines that were not rows (--on-bad-lines skip|quarantine)
    bad_line_examples: list[dict[str, Any]] = field(default_factory=list)  # the first few: source, line, reason
    quarantine: dict[str, Any] | None = None  # the unit's _rejected/ file: path, lines, bytes, sha256
    task_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: batchnlp.ledger.stats.column_stats
    finished_at: float | None = None  # wall clock when the unit's part was written
    # --partition-by: the unit's files, one per partition value combination in it: path (relative
    # to OUTPUT, COL=value/…/part-NNNNN.<suffix>), rows, bytes, sha256. Empty otherwise (``part`` holds the file).
    files: list[dict[str, Any]] = field(default_factory=list)
    schema: str = ""  # every column of the unit's rows (partition columns included), encode_schema
    # Each distinct input labelled once per run (batchnlp.execution.distinct), per task: the unit's rows,
    # the distinct inputs it was first to hold (run by the model, or found in the label cache), the
    # tokens the model ran for them and the tokens its rows did not cost, and its share of cache lookups.
    dedup: dict[str, dict[str, float]] = field(default_factory=dict)
    cache_files: list[dict[str, Any]] = field(default_factory=list)  # label cache files its labels went to

    @property
    def busy_seconds(self) -> float:
        """How long the unit took on its worker: read, each task (tokenise, model, decode) and write."""
        return busy_seconds(self.seconds)

    def __add__(self, other: PartResult | Totals) -> Totals:
        return Totals() + self + other

    def to_record(self) -> dict[str, Any]:
        """JSON-ready; the unit's URL loses user info and query string (a presigned URL's are credentials)."""
        return dataclasses.asdict(dataclasses.replace(self, unit=redacted_unit(self.unit)))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PartResult:
        return cls(**{**record, "unit": WorkUnit(**record["unit"])})

    def manifest_entry(self) -> PartEntry:
        """The part as the manifest lists it."""
        unit = redacted_unit(self.unit)
        return PartEntry(
            path=self.part.rsplit("/", 1)[-1] or None,
            source=unit.describe(),
            unit=unit.__dict__,
            rows=self.rows_out,
            rejected=self.rejected,
            bad_lines=self.bad_lines,
            quarantine=self.quarantine,
            tokens=self.tokens,
            padded_tokens=self.padded_tokens,
            bytes=self.bytes,
            sha256=self.sha256,
            files=self.files,
            seconds={k: round(v, 3) for k, v in self.seconds.items()},
            worker=self.worker,
            models_loaded_at=self.models_loaded_at,
        )


@dataclass(kw_only=True)
class Totals:
    """Sums over parts, the figures the manifest, the CLI and the metrics report: ``sum(results, Totals())``."""

    parts: int = 0
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_examples: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_EXAMPLES, part named
    bad_lines: int = 0
    bad_line_examples: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    rescored: int = 0
    labelled_by: dict[str, dict[str, int]] = field(default_factory=dict)  # a cascade's task → rows per model
    bytes: int = 0
    worker_seconds: dict[str, float] = field(default_factory=dict)
    dedup: dict[str, dict[str, float]] = field(default_factory=dict)  # per task: PartResult.dedup summed

    def __add__(self, other: PartResult | Totals) -> Totals:
        if isinstance(other, Totals):
            fields = dataclasses.fields(Totals)
            return Totals(**{f.name: _plus(getattr(self, f.name), getattr(other, f.name)) for f in fields})
        examples = [{"part": other.unit.id, **example} for example in other.rejected_examples]
        return self + Totals(
            parts=1,
            rows_in=other.rows_in,
            rows_out=other.rows_out,
            rejected=other.rejected,
            rejected_by_reason=dict(other.reasons),
            rejected_examples=examples,
            bad_lines=other.bad_lines,
            bad_line_examples=list(other.bad_line_examples),
            tokens=other.tokens,
            padded_tokens=other.padded_tokens,
            oom_splits=other.oom_splits,
            rescored=other.rescored,
            labelled_by={task: dict(counts) for task, counts in other.labelled_by.items()},
            bytes=other.bytes,
            worker_seconds=dict(other.seconds),
            dedup=other.dedup,
        )

    @property
    def shares(self) -> dict[str, float]:
        """Where the compute went, each a share from 0 to 1: ``padding`` of the tokens the model ran
        (pad tokens computed for nothing), ``input_wait`` of the engine's time (the model's thread
        waiting for a padded batch: the device starved of input), ``model`` of the workers' unit time
        (read, tasks, write) spent in the model itself, which is what keeps a device busy."""
        seconds = self.worker_seconds
        engine = sum(value for key, value in seconds.items() if key.startswith("engine:"))
        busy = busy_seconds(seconds)
        wait = min(seconds.get("input_wait", 0.0), engine)
        return {
            "padding": round(1 - self.tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "input_wait": round(wait / engine, 4) if engine else 0.0,
            "model": round((engine - wait) / busy, 4) if busy else 0.0,
        }

    @property
    def row_tokens(self) -> int:
        """The tokens of every annotated row: those the model ran, and those a distinct input run once
        (or the label cache) saved."""
        return self.tokens + sum(int(figures.get("tokens_saved", 0)) for figures in self.dedup.values())

    def saved(self, task: str | None = None) -> str | None:
        """What labelling each distinct input once saved, in words (one task's, or every task's summed):
        None where the run labelled every row (``--no-dedup``, or a record older than deduplication)."""
        figures = [self.dedup[task]] if task is not None else list(self.dedup.values())
        if not figures:
            return None
        total = {
            key: sum(f.get(key, 0) for f in figures) for key in ("rows", "distinct", "run", "cached", "tokens_saved")
        }
        cached = f", {total['cached']:,} of them from the label cache" if total["cached"] else ""
        rows, distinct = (
            f"{total[key]:,} {name}{'s' * (total[key] != 1)}"
            for key, name in (("rows", "row"), ("distinct", "distinct input"))
        )
        return f"{rows}, {distinct}{cached}, {total['run']:,} run by the model; {total['tokens_saved']:,} tokens saved"

    def to_record(self) -> dict[str, Any]:
        """As the manifest stores them: reasons sorted, seconds rounded to the millisecond, and the shares."""
        record = dataclasses.asdict(self)
        record["rejected_by_reason"] = dict(sorted(self.rejected_by_reason.items()))
        record["worker_seconds"] = {key: round(value, 3) for key, value in sorted(self.worker_seconds.items())}
        record["shares"] = self.shares
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Totals:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


def busy_seconds(seconds: dict[str, float]) -> float:
    """Worker time in the stages a unit's seconds sum to: read, each task (``model:NAME``: tokenise,
    model, decode) and write; ``engine:NAME`` and ``input_wait`` are parts of a task's time."""
    return sum(value for key, value in seconds.items() if key in ("read", "write") or key.startswith("model:"))


def _plus(a: Any, b: Any) -> Any:
    """One field of two totals added: counts summed, per-key counts merged, example lists capped."""
    if isinstance(a, dict):  # counts by key, or such dicts by key (dedup's per task)
        return {key: _plus(a[key], b[key]) if key in a and key in b else a.get(key, b.get(key)) for key in {**a, **b}}
    if isinstance(a, list):
        return (a + b)[:MAX_EXAMPLES]
    return a + b


@dataclass(kw_only=True)
class PartEntry:
    """One unit's part in the manifest: where it is, what it holds, and how it was produced."""

    path: str | None  # the part file's name under OUTPUT; None when the unit wrote no single file
    source: str  # the input range it annotated, as messages show it
    unit: dict[str, Any]  # the WorkUnit, URL redacted
    rows: int
    rejected: int
    bad_lines: int
    quarantine: dict[str, Any] | None
    tokens: int
    padded_tokens: int
    bytes: int
    sha256: str
    seconds: dict[str, float]
    worker: str
    models_loaded_at: float
    files: list[dict[str, Any]] = field(default_factory=list)  # --partition-by: one per partition value combination

    @property
    def paths(self) -> list[str]:
        """Every data file of the part, relative to OUTPUT."""
        return [self.path] if self.path else [f["path"] for f in self.files]

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if not self.files:
            del record["files"]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PartEntry:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})


@dataclass(kw_only=True)
class Manifest:
    """The commit record, ``_manifest.json``: what ran, on what, with which models, and every part written."""

    batchnlp_version: str
    run_id: str
    committed_at: str  # ISO 8601, UTC
    spec: dict[str, Any]  # JobSpec.redacted()
    input: dict[str, Any]  # format, files (path, size, etag), partitions, and a table's name and version
    output: dict[str, str]  # format, compression, suffix
    schema: dict[str, Any] | None  # columns (name → type) and the exact Arrow schema, base64 IPC
    models: dict[str, dict[str, Any]]  # task name → task kind, ref, version, weights checksums
    device: list[str]
    precision: list[str]
    parts: list[PartEntry]
    totals: Totals
    wall_seconds: float | None
    rows_per_second: float | None
    startup: dict[str, float | None] | None = None  # seconds to the first loaded model and first annotated row
    report: dict[str, dict[str, str]] | None = None  # _report.json and _report.html: path and sha256
    estimate: dict[str, Any] | None = (
        None  # the plan's estimate before the run (batchnlp.execution.estimate.estimate_from_plan)
    )
    # --label-cache: its URL, the version the run read, and the files of new labels its commit adds
    label_cache: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["parts"] = [part.to_record() for part in self.parts]
        record["totals"] = self.totals.to_record()
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Manifest:
        """A manifest as read back; keys an older batchnlp did not write take empty values."""
        empty: dict[str, Any] = {"spec": {}, "input": {}, "output": {}, "models": {}, "device": [], "precision": []}
        values = {f.name: record.get(f.name, empty.get(f.name)) for f in dataclasses.fields(cls)}
        values["parts"] = [PartEntry.from_record(part) for part in record.get("parts", [])]
        values["totals"] = Totals.from_record(record.get("totals", {}))
        return cls(**values)


def redacted_unit(unit: WorkUnit) -> WorkUnit:
    """``unit`` as records and the manifest show it: no credentials in its URL."""
    return dataclasses.replace(unit, path=redact_url(unit.path))


def encode_schema(schema: pa.Schema) -> str:
    """An Arrow schema as text for JSON records (the manifest): IPC bytes, base64."""
    return base64.b64encode(schema.remove_metadata().serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
