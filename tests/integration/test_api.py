"""The Python API does what the commands do, called directly: a sharded run on moto's S3 (input,
model and output in a bucket), one shard naming its index and one reading it from the
environment as an AWS Batch array child does, then the commit; plan, submit and job_spec; and
errors raised with the exit code the command would end with."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import s3fs

import batchnlp
from batchnlp.errors import BatchnlpError, SpecError
from tests.support import corpus
from tests.support.helpers import cpu_job, upload_dir, write_jsonl

ROWS = 40


@pytest.fixture
def lake(s3, bucket, tiny_model, tmp_path):
    """Settings of a job whose input, model and output are all in ``bucket``."""
    source = write_jsonl(tmp_path / "reviews.jsonl", [{"id": i, "text": t} for i, t in enumerate(corpus.texts(ROWS))])
    s3.upload_file(str(source), bucket, "in/reviews.jsonl")
    model = upload_dir(s3, tiny_model, bucket, "models/sst2")
    return cpu_job(f"s3://{bucket}/in/", f"s3://{bucket}/out", model, run_id="night")


def test_a_sharded_run_and_its_commit_from_python_on_s3(lake, scheduler, bucket, monkeypatch):
    settings = {**lake, "scheduler": scheduler}
    first = batchnlp.run(settings, shard="0/2")
    assert str(first.shard) == "0/2" and first.totals.rows_out > 0
    fs = s3fs.S3FileSystem()
    assert not fs.exists(f"{bucket}/out/_SUCCESS"), "a shard commits nothing"

    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "1")  # an array job's second child
    second = batchnlp.run(batchnlp.job_spec(**settings), shards=2)
    assert str(second.shard) == "1/2"
    assert first.totals.rows_out + second.totals.rows_out == ROWS

    summary = batchnlp.commit(f"s3://{bucket}/out", run_id="night")
    assert summary.totals.rows_out == ROWS and summary.shard is None and not summary.already_complete
    assert fs.exists(f"{bucket}/out/_SUCCESS")
    parts = sorted(path for path in fs.ls(f"{bucket}/out") if path.endswith(".parquet"))
    ids = sorted(i for path in parts for i in pq.read_table(fs.open(path, "rb")).column("id").to_pylist())
    assert ids == list(range(ROWS))
    again = batchnlp.commit(f"s3://{bucket}/out", run_id="night")
    assert again.already_complete


def test_plan_from_python_counts_the_input_and_writes_nothing(lake, bucket):
    figures = batchnlp.plan(lake, shards=2)
    assert figures["rows"]["low"] <= ROWS <= figures["rows"]["high"], figures["rows"]  # JSONL: sampled
    assert len(figures["by_shards"]) == 2 and figures["tokens"]["estimate"] > ROWS
    assert json.dumps(figures)  # the figures `batchnlp plan --json` prints
    assert not s3fs.S3FileSystem().exists(f"{bucket}/out")


def test_errors_carry_the_command_s_exit_code(tmp_path, tiny_model):
    missing = cpu_job(tmp_path / "nothing-here.jsonl", tmp_path / "out", tiny_model)
    with pytest.raises(BatchnlpError) as failed:
        batchnlp.run(missing)
    assert failed.value.exit_code == 2 and "nothing-here.jsonl" in str(failed.value)
    with pytest.raises(SpecError, match="exclude each other"):
        batchnlp.run(missing, shard="0/2", shards=2)
    with pytest.raises(SpecError, match=r"unknown setting .workerz."):
        batchnlp.job_spec(**missing, workerz=2)


def test_job_spec_puts_settings_over_the_file_as_flags_do(tmp_path, tiny_model):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(
        "input: in/${run_date}/\noutput: out/${table}/\nworkers: 4\nresume: true\n"
        f"models: {{sentiment: {tiny_model}}}\nstorage_options: {{anon: true, region: eu-west-1}}\n"
    )
    job = batchnlp.job_spec(
        spec, params={"table": "reviews"}, run_date="2026-11-24", workers=2, overwrite=True,
        storage_options={"region": "us-east-1"},
    )  # fmt: skip
    assert (job.input, job.output, job.workers) == ("in/2026-11-24/", "out/reviews/", 2)
    assert job.mode == "overwrite", "a write mode given now replaces the file's"
    assert dict(job.storage_options) == {"anon": True, "region": "us-east-1"}, "mappings merge by key"


def test_submit_from_python_returns_the_request_of_a_dry_run(tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text("input: s3://lake/in/\noutput: s3://lake/out/${run_date}/\n")
    submitted = batchnlp.submit(
        str(spec), queue="gpu", job_definition="batchnlp", run_date="2026-11-24", run_args=["--workers", "2"],
        dry_run=True,
    )  # fmt: skip
    request = json.loads("\n".join(submitted.lines))
    assert request["jobQueue"] == "gpu" and request["jobDefinition"] == "batchnlp"
    assert "--workers" in request["containerOverrides"]["command"]
    with pytest.raises(SpecError, match="need --shards N"):
        batchnlp.submit(str(spec), queue="gpu", job_definition="batchnlp", only_shards=[3], run_id="r")


def test_the_package_exports_what_it_lists():
    assert {"run", "commit", "plan", "distill", "submit", "job_spec", "JobSpec"} <= set(batchnlp.__all__)
    assert all(callable(getattr(batchnlp, name)) for name in batchnlp.__all__ if name != "__version__")
    with pytest.raises(AttributeError):
        batchnlp.no_such_function  # noqa: B018
