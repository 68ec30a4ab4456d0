"""`batchnlp submit --from DATE --to DATE`: one run per date, committed dates skipped, against moto's AWS Batch."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batchnlp.io.storage import Location
from batchnlp.ledger.commit import Committer
from tests.integration.deploy.test_submit import batch, invoke, job_ids, parsed  # noqa: F401 - batch is the fixture
from tests.support.helpers import manifest

DAYS = ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]


def nightly_spec(tmp_path: Path, output: str, extra: str = "") -> Path:
    spec = tmp_path / "nightly.yaml"
    spec.write_text(f"input: {tmp_path}/in/dt=${{run_date}}/\noutput: {output}\ntasks: [sentiment]\n{extra}")
    return spec


def committed(output: Path, run_id: str) -> None:
    """OUTPUT sealed by run ``run_id``: _manifest.json and _SUCCESS, as a finished run leaves them."""
    output.mkdir(parents=True)
    Committer(Location(str(output), {})).commit(manifest(run_id))


def backfill(spec: Path, queue: str, *flags: str):
    return invoke(
        "submit", "--spec", str(spec), "--queue", queue, "--job-definition", "batchnlp",
        "--from", DAYS[0], "--to", DAYS[-1], *flags,
    )  # fmt: skip


def submitted_jobs(client, queue: str) -> list[dict]:
    listed = client.list_jobs(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": ["*"]}])["jobSummaryList"]
    return client.describe_jobs(jobs=[job["jobId"] for job in listed])["jobs"] if listed else []


def test_backfill_skips_dates_committed_at_their_output_and_submits_the_others(batch, tmp_path):  # noqa: F811
    client, queue = batch
    spec = nightly_spec(tmp_path, f"{tmp_path}/out/dt=${{run_date}}/")
    committed(tmp_path / "out" / "dt=2026-11-20", "2026-11-20")
    committed(tmp_path / "out" / "dt=2026-11-22", "20261101T000000Z-manual")  # committed, but by another run

    dry = backfill(spec, queue, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert submitted_jobs(client, queue) == []
    lines = dry.stdout.splitlines()  # the report alone: log lines go to stderr
    assert lines[0] == f"backfill 2026-11-20 to 2026-11-23 of {spec}: would submit 2, skipping 2"
    assert lines[1] == f"2026-11-20 skipped: {tmp_path}/out/dt=2026-11-20/ holds its commit (_SUCCESS, run 2026-11-20)"
    assert lines[2] == f"2026-11-21 would submit batchnlp-nightly-2026-11-21 -> {tmp_path}/out/dt=2026-11-21/"
    assert lines[3].startswith("2026-11-22 skipped") and "holds run 20261101T000000Z-manual's commit" in lines[3]

    result = backfill(spec, queue)
    assert result.exit_code == 0, result.output
    jobs = client.describe_jobs(jobs=job_ids(result.output))["jobs"]
    submitted = [DAYS[1], DAYS[3]]
    assert [job["jobName"] for job in jobs] == [f"batchnlp-nightly-{day}" for day in submitted]
    for job, day in zip(jobs, submitted, strict=True):
        run = parsed(job["container"]["command"])
        assert (run["run_date"], run["run_id"], run["resume"]) == (day, day, True)
    assert "2026-11-20 skipped" in result.output
    assert len(submitted_jobs(client, queue)) == 2  # what the dry run's check above would have seen


def test_a_sharded_backfill_submits_an_array_and_a_commit_job_per_date(batch, tmp_path):  # noqa: F811
    client, queue = batch
    spec = nightly_spec(tmp_path, f"{tmp_path}/out/dt=${{yesterday}}/")
    committed(tmp_path / "out" / "dt=2026-11-21", "2026-11-22")  # ${yesterday}: run 2026-11-22 wrote dt=2026-11-21
    result = backfill(spec, queue, "--shards", "3")
    assert result.exit_code == 0, result.output
    assert "2026-11-22 skipped" in result.output
    ids = job_ids(result.output)
    jobs = {job["jobId"]: job for job in client.describe_jobs(jobs=ids)["jobs"]}
    for (array_id, commit_id), day in zip(
        zip(ids[::2], ids[1::2], strict=True), ["2026-11-20", "2026-11-21", "2026-11-23"], strict=True
    ):
        array, commit = jobs[array_id], jobs[commit_id]
        assert array["arrayProperties"]["size"] == 3 and commit["dependsOn"] == [{"jobId": array_id}]
        (child,) = client.describe_jobs(jobs=[f"{array_id}:0"])["jobs"]
        assert parsed(child["container"]["command"])["run_id"] == day
        assert parsed(commit["container"]["command"])["run_id"] == day


def test_dates_that_would_overwrite_each_others_output_are_refused(batch, tmp_path):  # noqa: F811
    client, queue = batch
    spec = nightly_spec(tmp_path, f"{tmp_path}/out/latest/")
    result = backfill(spec, queue)
    assert result.exit_code == 2
    assert f"writes 2026-11-20 and 2026-11-21 to the same output {tmp_path}/out/latest/" in result.output
    assert "put ${run_date}" in result.output
    assert submitted_jobs(client, queue) == []


def test_a_delta_table_date_is_skipped_when_the_table_records_its_run_id(batch, tmp_path):  # noqa: F811
    from deltalake import CommitProperties, Transaction, write_deltalake

    from batchnlp.io.tables.base import RUN_ID_PROPERTY
    from batchnlp.io.tables.delta import APP_ID

    _, queue = batch
    table = tmp_path / "labels"
    # One table for every date: runs, not paths, tell the dates apart.
    spec = nightly_spec(tmp_path, str(table), "output_format: delta\n")
    for run_id in ("2026-11-21", "some-other-run"):
        properties = CommitProperties(
            custom_metadata={RUN_ID_PROPERTY: run_id}, app_transactions=[Transaction(APP_ID.format(run_id=run_id), 0)]
        )
        write_deltalake(str(table), pa.table({"id": [1]}), mode="append", commit_properties=properties)
    result = backfill(spec, queue, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"2026-11-21 skipped: version 0 of {table} records run 2026-11-21" in result.output
    assert [line.split()[0] for line in result.output.splitlines() if "would submit batchnlp" in line] == [
        "2026-11-20", "2026-11-22", "2026-11-23",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--to", "2026-11-21"], "needs both --from DATE and --to DATE"),
        (["--from", "2026-11-21", "--to", "2026-11-20"], "--to 2026-11-20 is before --from 2026-11-21"),
        (["--from", "2026-11-21", "--to", "2026-13-01"], "--from and --to take dates"),
        (["--from", "2025-01-01", "--to", "2026-11-21"], "backfill at most 366 at a time"),
        (["--from", "2026-11-20", "--to", "2026-11-21", "--run-id", "x"], "drop --run-date, --run-id, --name"),
    ],
)
def test_backfill_refusals(tmp_path, flags, message):
    spec = nightly_spec(tmp_path, f"{tmp_path}/out/dt=${{run_date}}/")
    result = invoke("submit", "--spec", str(spec), "--queue", "q", "--job-definition", "d", "--dry-run", *flags)
    assert result.exit_code == 2 and message in result.output, result.output
