"""The commit protocol: per-part results, progress records, the manifest and ``_SUCCESS``.

Parts are written by workers under deterministic names; nothing names a part until the
driver records it. The driver writes a progress record per finished part (for ``--resume``),
then ``_manifest.json`` and ``_SUCCESS``, both create-only, so readers that trust
``_SUCCESS`` never see a partial result and a second committer fails loudly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchnlp.errors import OutputError
from batchnlp.formats.base import WorkUnit
from batchnlp.redaction import redact_url
from batchnlp.storage import Location, storage_errors, write_atomic, write_create_only

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
REPORT_JSON = "_report.json"  # the run report (batchnlp.report), written just before the manifest
REPORT_HTML = "_report.html"
PROGRESS = "_progress"
REJECTED = "_rejected"  # --on-bad-lines quarantine: raw bad lines, one file per unit
JOB_RECORD = "_job.json"
MAX_EXAMPLES = 20


@dataclass
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
    first_output_at: float | None = None  # wall clock when the unit's first rows were annotated
    bad_lines: int = 0  # source lines that were not rows (--on-bad-lines skip|quarantine)
    bad_line_examples: list[dict[str, Any]] = field(default_factory=list)  # the first few: source, line, reason
    quarantine: dict[str, Any] | None = None  # the unit's _rejected/ file: path, lines, bytes, sha256
    task_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: batchnlp.stats.column_stats
    finished_at: float | None = None  # wall clock when the unit's part was written
    # --partition-by: the unit's files, one per partition value combination in it: path (relative
    # to OUTPUT, COL=value/…/part-NNNNN.<suffix>), rows, bytes, sha256. Empty otherwise (``part`` holds the file).
    files: list[dict[str, Any]] = field(default_factory=list)
    schema: str = ""  # every column of the unit's rows (partition columns included), batchnlp.tables.encode_schema

    @property
    def busy_seconds(self) -> float:
        """How long the unit took on its worker: read, each task (tokenise, model, decode) and write."""
        return sum(v for k, v in self.seconds.items() if k in ("read", "write") or k.startswith("model:"))

    def to_record(self) -> dict[str, Any]:
        """JSON-ready; the unit's URL loses user info and query string (a presigned URL's are credentials)."""
        return dataclasses.asdict(dataclasses.replace(self, unit=redacted_unit(self.unit)))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PartResult:
        return cls(**{**record, "unit": WorkUnit(**record["unit"])})


def totals(results: list[PartResult]) -> dict[str, Any]:
    """Sums over parts: the figures the manifest and the CLI report."""
    reasons: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    bad_examples: list[dict[str, Any]] = []
    for result in results:
        examples.extend({"part": result.unit.id, **example} for example in result.rejected_examples)
        bad_examples.extend(result.bad_line_examples)
        reasons.update(result.reasons)
        seconds.update(result.seconds)
    return {
        "parts": len(results),
        "rows_in": sum(r.rows_in for r in results),
        "rows_out": sum(r.rows_out for r in results),
        "rejected": sum(r.rejected for r in results),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "rejected_examples": examples[:MAX_EXAMPLES],
        "bad_lines": sum(r.bad_lines for r in results),
        "bad_line_examples": bad_examples[:MAX_EXAMPLES],
        "tokens": sum(r.tokens for r in results),
        "padded_tokens": sum(r.padded_tokens for r in results),
        "oom_splits": sum(r.oom_splits for r in results),
        "bytes": sum(r.bytes for r in results),
        "worker_seconds": {key: round(value, 3) for key, value in sorted(seconds.items())},
    }


def redacted_unit(unit: WorkUnit) -> WorkUnit:
    """``unit`` as records and the manifest show it: no credentials in its URL."""
    return dataclasses.replace(unit, path=redact_url(unit.path))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Committer:
    """Owns the control files under OUTPUT: what exists, what may be overwritten, what commits."""

    def __init__(self, output: Location, restart: str = "use --overwrite to start again") -> None:
        self.output = output
        self.restart = restart  # what a user does when a changed job cannot resume
        self.fs, self.root = output.split()

    def path(self, name: str) -> str:
        return self.output.child(name)

    def finished(self) -> bool:
        return self.fs.exists(self.path(SUCCESS))

    def prepare(self, mode: str, job_record: dict[str, Any]) -> dict[str, PartResult]:
        """Apply the write mode; return the parts a resumed run may keep (unit id → result)."""
        if mode == "new" and self.finished():
            raise OutputError(
                f"output {self.output.display()} already holds a finished run (_SUCCESS); "
                "pass --overwrite to replace it or --resume to finish an interrupted run"
            )
        if mode == "resume":
            kept = self._resumable(job_record)
            if kept:
                # A manifest without _SUCCESS is a commit that died half-way: nothing trusts it.
                if self.fs.exists(self.path(MANIFEST)):
                    self.fs.rm(self.path(MANIFEST))
                return kept
        # A new run owns the output: leftovers of an interrupted attempt must not be resumed later.
        self.clear()
        write_atomic(self.fs, self.path(f"{PROGRESS}/{JOB_RECORD}"), _json(job_record))
        return {}

    def clear(self) -> None:
        """Remove a previous run's files: ``_SUCCESS`` first, so no reader trusts what follows."""
        with storage_errors("delete", self.output.display()):
            for name in (SUCCESS, MANIFEST, REPORT_JSON, REPORT_HTML):
                if self.fs.exists(self.path(name)):
                    self.fs.rm(self.path(name))
            for path in self.fs.glob(self.path("part-*")) + self.fs.glob(self.path(f"{PROGRESS}/*")):
                self.fs.rm(path)
            self._clear_partitions()
            if self.fs.exists(self.path(REJECTED)):
                self.fs.rm(self.path(REJECTED), recursive=True)

    def _clear_partitions(self) -> None:
        """Part files under ``COL=value/`` directories (--partition-by), then the directories they leave empty.

        Only ``part-*`` files are removed; anything else the directories hold stays, and so do they.
        """
        for top in self.fs.glob(self.path("*=*")):
            if not self.fs.isdir(top):
                continue
            for path in self.fs.find(top):
                if path.rsplit("/", 1)[-1].startswith("part-"):
                    self.fs.rm(path)
            if not self.fs.find(top) and self.fs.exists(top):  # object stores have no empty directories
                self.fs.rm(top, recursive=True)

    def record(self, result: PartResult) -> None:
        """Note a finished part so a crashed driver can be resumed without redoing it."""
        write_atomic(self.fs, self.path(f"{PROGRESS}/{result.unit.id}.json"), _json(result.to_record()))

    def read_manifest(self) -> dict[str, Any]:
        with storage_errors("read", self.fs.unstrip_protocol(self.path(MANIFEST))):
            return json.loads(self.fs.cat_file(self.path(MANIFEST)))

    def write_report(self, report: dict[str, Any]) -> dict[str, dict[str, str]]:
        """``_report.json`` and ``_report.html``; overwritable (a commit that died may have left them).

        Returns each file's name and sha256 for the manifest, which ``_SUCCESS`` then seals.
        """
        from batchnlp.report import render_html

        files = {"json": (REPORT_JSON, _json(report)), "html": (REPORT_HTML, render_html(report).encode())}
        for name, data in files.values():
            write_atomic(self.fs, self.path(name), data)
        return {key: {"path": name, "sha256": sha256(data)} for key, (name, data) in files.items()}

    def commit(self, manifest: dict[str, Any]) -> None:
        """Manifest, then ``_SUCCESS`` naming it: the marker's body ties it to this manifest."""
        data = _json(manifest)
        write_create_only(self.fs, self.path(MANIFEST), data)
        marker = {"run_id": manifest["run_id"], "manifest_sha256": sha256(data)}
        write_create_only(self.fs, self.path(SUCCESS), _json(marker))

    def previous_job(self) -> dict[str, Any] | None:
        """The job record an earlier (maybe interrupted) run left, if any."""
        job_path = self.path(f"{PROGRESS}/{JOB_RECORD}")
        with storage_errors("read", self.fs.unstrip_protocol(job_path)):
            return json.loads(self.fs.cat_file(job_path)) if self.fs.exists(job_path) else None

    def _resumable(self, job_record: dict[str, Any]) -> dict[str, PartResult]:
        """Parts whose record matches this job and whose file has the recorded bytes."""
        previous = self.previous_job()
        if previous is None:
            return {}
        what = {"spec_fingerprint": "the job spec", "input_fingerprint": "the input listing or its units"}
        changed = [what[key] for key in what if previous.get(key) != job_record.get(key)]
        models, earlier = job_record.get("model_versions", {}), previous.get("model_versions", {})
        changed += [f"the model of task {name!r}" for name in models if earlier.get(name) != models[name]]
        if changed:
            raise OutputError(
                f"cannot resume {self.output.display()}: "
                + " and ".join(changed)
                + f" changed since the interrupted run; {self.restart}"
            )
        kept: dict[str, PartResult] = {}
        for path in self.fs.glob(self.path(f"{PROGRESS}/part-*.json")):
            result = PartResult.from_record(json.loads(self.fs.cat_file(path)))
            if self._part_intact(result):
                kept[result.unit.id] = result
        return kept

    def _part_intact(self, result: PartResult) -> bool:
        """The part (or each partitioned file) and its quarantined lines (if any) hold exactly the recorded bytes."""
        files = [(self.fs._strip_protocol(result.part), result.sha256)] if result.part else []
        files += [(self.path(f["path"]), f["sha256"]) for f in result.files]
        if result.quarantine:
            files.append((self.path(result.quarantine["path"]), result.quarantine["sha256"]))
        return all(self.fs.exists(path) and sha256(self.fs.cat_file(path)) == digest for path, digest in files)


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()
