"""The commit protocol: progress records, the manifest and ``_SUCCESS`` (record types: :mod:`.record`).

Parts are written by workers under deterministic names; nothing names a part until the
driver records it. The driver writes a progress record per finished part (for ``--resume``),
then ``_manifest.json`` and ``_SUCCESS``, both create-only, so readers that trust
``_SUCCESS`` never see a partial result and a second committer fails loudly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchnlp.errors import OutputError
from batchnlp.io.formats import WorkUnit
from batchnlp.io.layout import JOB_RECORD, MANIFEST, PROGRESS, REPORT_HTML, REPORT_JSON, SUCCESS
from batchnlp.io.storage import Location, storage_errors, write_atomic, write_create_only
from batchnlp.ledger.record import JobRecord, Manifest, PartResult
from batchnlp.util.compat import strip_protocol


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
        """A batchnlp run is sealed here: ``_SUCCESS`` holds its marker (Spark's and Hadoop's are empty: not ours)."""
        path = self.path(SUCCESS)
        with storage_errors("read", self.output.display(path)):
            try:
                return self.fs.info(path)["size"] > 0
            except FileNotFoundError:
                return False

    def prepare(self, mode: str, job_record: JobRecord) -> dict[str, PartResult]:
        """Apply the write mode; return the parts a resumed run may keep (unit id → result).

        Whatever the mode, OUTPUT must hold nothing that batchnlp did not write (:mod:`batchnlp.ledger.ownership`).
        """
        from batchnlp.ledger import ownership

        stock = ownership.take_stock(self.output)
        ownership.refuse_foreign(self.output, stock)
        if mode == "new" and self.finished():
            raise OutputError(
                f"output {self.output.display()} already holds a finished run (_SUCCESS); "
                "pass --overwrite to replace it or --resume to finish an interrupted run"
            )
        if mode == "resume":
            kept = self.resumable(job_record)
            if kept:
                # A manifest without _SUCCESS is a commit that died half-way: nothing trusts it.
                if self.fs.exists(self.path(MANIFEST)):
                    self.fs.rm(self.path(MANIFEST))
                return kept
        # A new run owns the output: leftovers of an interrupted attempt must not be resumed later.
        ownership.clear(self.output, stock)
        write_atomic(self.fs, self.path(f"{PROGRESS}/{JOB_RECORD}"), json_bytes(job_record.to_record()))
        return {}

    def clear(self) -> None:
        """Remove a previous run's files: those batchnlp's records name, no other (:func:`.ownership.clear`)."""
        from batchnlp.ledger import ownership

        ownership.clear(self.output, ownership.take_stock(self.output))

    def record(self, result: PartResult) -> None:
        """Note a finished part so a crashed driver can be resumed without redoing it."""
        write_atomic(self.fs, self.path(f"{PROGRESS}/{result.unit.id}.json"), json_bytes(result.to_record()))

    def read_manifest(self) -> Manifest:
        with storage_errors("read", self.fs.unstrip_protocol(self.path(MANIFEST))):
            return Manifest.from_record(json.loads(self.fs.cat_file(self.path(MANIFEST))))

    def write_report(self, report: dict[str, Any]) -> dict[str, dict[str, str]]:
        """``_report.json`` and ``_report.html``; overwritable (a commit that died may have left them).

        Returns each file's name and sha256 for the manifest, which ``_SUCCESS`` then seals.
        """
        from batchnlp.ledger.report import render_html

        files = {"json": (REPORT_JSON, json_bytes(report)), "html": (REPORT_HTML, render_html(report).encode())}
        for name, data in files.values():
            write_atomic(self.fs, self.path(name), data)
        return {key: {"path": name, "sha256": sha256(data)} for key, (name, data) in files.items()}

    def commit(self, manifest: Manifest) -> None:
        """Manifest, then ``_SUCCESS`` naming it: the marker's body ties it to this manifest."""
        data = json_bytes(manifest.to_record())
        write_create_only(self.fs, self.path(MANIFEST), data)
        marker = {"run_id": manifest.run_id, "manifest_sha256": sha256(data)}
        write_create_only(self.fs, self.path(SUCCESS), json_bytes(marker))

    def previous_job(self) -> JobRecord | None:
        """The job record an earlier (maybe interrupted) run left, if any."""
        job_path = self.path(f"{PROGRESS}/{JOB_RECORD}")
        with storage_errors("read", self.fs.unstrip_protocol(job_path)):
            return JobRecord.from_record(json.loads(self.fs.cat_file(job_path))) if self.fs.exists(job_path) else None

    def resumable(self, job_record: JobRecord, units: list[WorkUnit] | None = None) -> dict[str, PartResult]:
        """Parts (of ``units``, or all) whose record matches this job and whose file has the recorded bytes."""
        previous = self.previous_job()
        if previous is None:
            return {}
        changed = []
        if previous.spec_fingerprint != job_record.spec_fingerprint:
            changed.append("the job spec")
        if previous.input_fingerprint != job_record.input_fingerprint:
            changed.append("the input listing or its units")
        models, earlier = job_record.model_versions, previous.model_versions
        changed += [f"the model of task {name!r}" for name in models if earlier.get(name) != models[name]]
        if changed:
            raise OutputError(
                f"cannot resume {self.output.display()}: "
                + " and ".join(changed)
                + f" changed since the interrupted run; {self.restart}"
            )
        return self.recorded(units)[0]

    def recorded(self, units: list[WorkUnit] | None = None) -> tuple[dict[str, PartResult], list[str]]:
        """The finished parts (of ``units``, or all) whose files hold their recorded bytes, by unit id;
        and the ids of those whose record is there but a file is missing or damaged."""
        wanted = None if units is None else {unit.id for unit in units}
        intact: dict[str, PartResult] = {}
        damaged = []
        with storage_errors("read", self.output.display(self.path(PROGRESS))):
            for path in self.fs.glob(self.path(f"{PROGRESS}/part-*.json")):
                result = PartResult.from_record(json.loads(self.fs.cat_file(path)))
                if wanted is not None and result.unit.id not in wanted:
                    continue
                if self._part_intact(result):
                    intact[result.unit.id] = result
                else:
                    damaged.append(result.unit.id)
        return intact, sorted(damaged)

    def _part_intact(self, result: PartResult) -> bool:
        """The part (or each partitioned file) and its quarantined lines (if any) hold exactly the recorded bytes."""
        files = [(strip_protocol(self.fs, result.part), result.sha256)] if result.part else []
        files += [(self.path(f["path"]), f["sha256"]) for f in result.files]
        if result.quarantine:
            files.append((self.path(result.quarantine["path"]), result.quarantine["sha256"]))
        return all(self.fs.exists(path) and sha256(self.fs.cat_file(path)) == digest for path, digest in files)


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()
