"""The commit protocol without a cluster: write modes, progress records and resume checks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from batchnlp.errors import OutputError
from batchnlp.io.formats import WorkUnit
from batchnlp.io.storage import Location
from batchnlp.ledger.commit import Committer, json_bytes, sha256
from batchnlp.ledger.record import JobRecord, PartResult, Sharding, Totals
from tests.support.helpers import job_record, manifest, part_result

JOB = job_record("r1", model_versions={"sentiment": "sha256:1"})


def fake_part(committer: Committer, index: int, data: bytes) -> PartResult:
    unit = WorkUnit(index=index, path="file:///in.jsonl", format="jsonl", start=index * 10, stop=index * 10 + 10)
    path = committer.path(f"{unit.id}.parquet")
    committer.fs.pipe_file(path, data)
    example = {"row": 2, "id": None, "reason": "text is null"}
    return part_result(
        index, rows=3, unit=unit, part=committer.fs.unstrip_protocol(path), rejected_examples=[example],
        bytes=len(data), sha256=sha256(data),
    )  # fmt: skip


@pytest.fixture
def committer(tmp_path) -> Committer:
    return Committer(Location(str(tmp_path / "out"), {}))


def test_resume_keeps_only_parts_whose_bytes_match_their_record(committer):
    committer.prepare("new", JOB)
    for index in range(3):
        committer.record(fake_part(committer, index, f"data {index}".encode()))
    committer.fs.pipe_file(committer.path("part-00001.parquet"), b"torn or different bytes")
    committer.fs.rm(committer.path("part-00002.parquet"))
    kept = committer.prepare("resume", replace(JOB, run_id="r2"))
    assert sorted(kept) == ["part-00000"]


def test_resume_keeps_a_part_only_with_its_quarantined_lines_intact(committer):
    committer.prepare("new", JOB)
    committer.fs.makedirs(committer.path("_rejected"), exist_ok=True)
    for index in range(3):
        result = fake_part(committer, index, f"data {index}".encode())
        raw = f"bad line {index}\n".encode()
        committer.fs.pipe_file(committer.path(f"_rejected/{result.unit.id}.jsonl"), raw)
        result.quarantine = {"path": f"_rejected/{result.unit.id}.jsonl", "lines": 1, "sha256": sha256(raw)}
        committer.record(result)
    committer.fs.rm(committer.path("_rejected/part-00001.jsonl"))
    committer.fs.pipe_file(committer.path("_rejected/part-00002.jsonl"), b"edited\n")
    assert sorted(committer.prepare("resume", replace(JOB, run_id="r2"))) == ["part-00000"]
    committer.prepare("new", replace(JOB, run_id="r3"))
    assert not committer.fs.exists(committer.path("_rejected")), "a new run clears the quarantine"


@pytest.mark.parametrize(
    "change, value, named",
    [
        ("spec_fingerprint", "other", "the job spec"),
        ("input_fingerprint", "other", "the input listing or its units"),
        ("model_versions", {"sentiment": "sha256:2"}, "the model of task 'sentiment'"),
    ],
)
def test_resume_refuses_a_changed_job(committer, change, value, named):
    committer.prepare("new", JOB)
    committer.record(fake_part(committer, 0, b"x"))
    with pytest.raises(OutputError, match=f"{named} changed since the interrupted run"):
        committer.prepare("resume", replace(JOB, **{change: value}))


def test_a_new_run_clears_an_interrupted_attempt_and_commit_is_create_only(committer):
    committer.prepare("new", JOB)
    committer.record(fake_part(committer, 0, b"x"))
    committer.prepare("new", replace(JOB, run_id="r2"))
    assert committer.prepare("resume", replace(JOB, run_id="r3")) == {}, "nothing left to resume"
    committer.commit(manifest("r3"))
    assert json.loads(committer.fs.cat_file(committer.path("_SUCCESS")))["run_id"] == "r3"
    with pytest.raises(OutputError, match="already exists"):
        committer.commit(manifest("r4"))
    with pytest.raises(OutputError, match="--overwrite"):
        committer.prepare("new", JOB)
    committer.prepare("overwrite", JOB)
    assert not committer.finished()


def test_totals_add_up_parts_and_keep_examples(committer):
    committer.prepare("new", JOB)
    results = [fake_part(committer, i, b"x") for i in range(2)]
    summary = sum(results, Totals())
    assert summary == results[0] + results[1]
    assert summary.parts == 2 and summary.rows_in == 6 and summary.rejected == 2
    assert summary.rejected_by_reason == {"text is null": 2}
    assert summary.rejected_examples[1] == {"part": "part-00001", "row": 2, "id": None, "reason": "text is null"}
    assert summary.worker_seconds == {"read": 1.0, "model:sentiment": 3.0}
    assert Totals.from_record(summary.to_record()) == summary


def test_a_manifest_reads_back_as_it_was_written(committer):
    committer.prepare("new", JOB)
    written = manifest("r1", [fake_part(committer, i, b"x") for i in range(2)])
    committer.commit(written)
    assert committer.read_manifest() == written
    assert [part.paths for part in written.parts] == [["part-00000.parquet"], ["part-00001.parquet"]]


def test_resume_finishes_a_commit_that_died_between_manifest_and_success(committer):
    committer.prepare("new", JOB)
    committer.record(fake_part(committer, 0, b"x"))
    committer.fs.pipe_file(committer.path("_manifest.json"), b"{}")  # the driver died right here
    assert sorted(committer.prepare("resume", JOB)) == ["part-00000"]
    committer.commit(manifest("r1"))
    assert committer.finished()


def test_the_job_record_is_readable_for_a_resumed_run(committer):
    assert committer.previous_job() is None
    committer.prepare("new", replace(JOB, rows_per_unit=1234))
    assert committer.previous_job().rows_per_unit == 1234


# _progress/_job.json exactly as batchnlp wrote it before the record was typed (json_bytes of a dict):
# an interrupted run of that version must still resume, and a rewritten record must not differ by a byte.
JOB_FILE = b"""{
  "batchnlp_version": "0.1.0",
  "input_fingerprint": "9c2e4f",
  "model_versions": {
    "sentiment": "sha256:1"
  },
  "rows_per_unit": 10,
  "run_id": "r1",
  "spec": {
    "input": "in.jsonl",
    "output": "out/"
  },
  "spec_fingerprint": "s1",
  "units": 3
}"""
SHARDED_JOB_FILE = b"""{
  "batchnlp_version": "0.1.0",
  "estimate": null,
  "input_fingerprint": "9c2e4f",
  "model_versions": {},
  "planned_at": 1764892800.25,
  "rows_per_unit": 10,
  "run_id": "night-1",
  "settings": {
    "input": "in.jsonl",
    "output": "out/"
  },
  "shards": 4,
  "spec": {},
  "spec_fingerprint": "s1",
  "units": 8
}"""


def test_a_job_record_in_the_untyped_format_reads_resumes_and_writes_back_byte_for_byte(committer):
    committer.fs.makedirs(committer.path("_progress"), exist_ok=True)
    committer.fs.pipe_file(committer.path("_progress/_job.json"), JOB_FILE)
    committer.record(fake_part(committer, 0, b"x"))
    previous = committer.previous_job()
    assert previous == job_record(
        "r1", input_fingerprint="9c2e4f", model_versions={"sentiment": "sha256:1"}, rows_per_unit=10, units=3,
        batchnlp_version="0.1.0", spec={"input": "in.jsonl", "output": "out/"},
    )  # fmt: skip
    assert previous.sharding is None
    assert sorted(committer.prepare("resume", replace(previous, run_id="r2"))) == ["part-00000"]
    assert json_bytes(previous.to_record()) == JOB_FILE
    sharded = JobRecord.from_record(json.loads(SHARDED_JOB_FILE))
    assert sharded.sharding == Sharding(
        shards=4, settings={"input": "in.jsonl", "output": "out/"}, planned_at=1764892800.25, estimate=None
    )
    assert json_bytes(sharded.to_record()) == SHARDED_JOB_FILE, "a sharded record keeps its null estimate"


def test_a_job_record_round_trips_through_its_file(committer):
    sharded = replace(JOB, sharding=Sharding(shards=2, settings={"input": "x"}, planned_at=1.5, estimate={"rows": 9}))
    for job in (JOB, sharded):
        committer.prepare("overwrite", job)
        assert committer.previous_job() == job
    with pytest.raises(KeyError):  # no run id: not a job record of batchnlp's
        JobRecord.from_record({"units": 3})
