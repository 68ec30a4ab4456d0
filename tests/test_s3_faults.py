"""Storage faults: transient S3 errors are retried, permanent ones stop the job naming the object.

Faults come from the proxy in front of moto (tests/s3proxy.py): the requests of the test
process and of the Dask worker processes alike get HTTP 500, 503 SlowDown, connection resets,
late answers and 403 AccessDenied, and nothing of batchnlp is patched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import s3fs
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.retry import TOTAL_MAX_ATTEMPTS
from tests import corpus

READ_TIMEOUT = 2  # the job's own read timeout (a user override): late answers need not wait 30 s
DEFAULT_ATTEMPTS = 5  # botocore's own (legacy mode) attempts, which batchnlp's policy raises


@pytest.fixture
def faults(s3_proxy):
    """The proxy with no rule armed before the test, and none left after it."""
    s3_proxy.clear()
    yield s3_proxy
    s3_proxy.clear()


def put_jsonl(s3, bucket: str, files: int, rows: int) -> list[str]:
    """``files`` JSONL files of ``rows`` rows under in/; returns every id."""
    ids = []
    for f in range(files):
        texts = corpus.texts(rows, seed=f)
        records = [{"id": f"f{f}-r{i:03d}", "text": text} for i, text in enumerate(texts)]
        body = "".join(json.dumps(r) + "\n" for r in records).encode()
        s3.put_object(Bucket=bucket, Key=f"in/part-{f}.jsonl", Body=body)
        ids += [r["id"] for r in records]
    return ids


def run_cli(*args: str):
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output, result.output
    return result


def job_args(bucket: str, model: Path, tmp_path: Path, *extra: str) -> list[str]:
    spec = tmp_path / "storage.yaml"
    spec.write_text(json.dumps({"storage_options": {"config_kwargs": {"read_timeout": READ_TIMEOUT}}}))
    return [
        f"s3://{bucket}/in/", f"s3://{bucket}/out/", "--model", f"sentiment={model}",
        "--workers", "1", "--rows-per-partition", "20", "--spec", str(spec), *extra,
    ]  # fmt: skip


def keys(s3, bucket: str, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix) for item in listing)


def test_a_job_rides_out_transient_faults_on_reads_writes_and_listings(s3, bucket, tiny_model, tmp_path, faults):
    ids = put_jsonl(s3, bucket, files=2, rows=30)
    late, prompt = READ_TIMEOUT + 1.5, READ_TIMEOUT / 4
    assert TOTAL_MAX_ATTEMPTS > DEFAULT_ATTEMPTS
    first, second = r"/in/part-0\.jsonl", r"/in/part-1\.jsonl"
    # Faults go to different requests where they can, so each shows its own retry. The driver reads
    # each input file once to plan; with after=N a rule lets N matching requests through that no
    # earlier rule took (the planning read, a retry), which puts it on a worker's read of a unit.
    rules = [
        faults.inject("500", "GET", first),  # the driver's planning read
        faults.inject("503", "GET", second, after=1),
        faults.inject("reset", "GET", first, after=1),
        faults.inject("delay", "GET", second, after=2, seconds=late),  # past the read timeout: retried
        faults.inject("delay", "GET", first, after=2, seconds=prompt),  # slow but in time: just succeeds
        faults.inject("500", "PUT", r"/out/part-00000\.parquet"),
        # As many 500s as botocore's own default attempts: only the policy's later attempts get through
        # (s3fs never retries InternalError).
        faults.inject("500", "PUT", r"/out/part-00001\.parquet", times=DEFAULT_ATTEMPTS),
        faults.inject("503", "PUT", r"/out/part-00002\.parquet"),
        faults.inject("delay", "PUT", r"/out/part-00002\.parquet", seconds=late),  # moto wrote it: rewritten
        faults.inject("reset", "PUT", r"/out/part-00003\.parquet"),
        faults.inject("500", "GET", r"\?list-type=2&prefix=in%2F&delimiter=%2F"),  # listing the input
        faults.inject("503", "GET", r"\?list-type=2&prefix=in%2F&delimiter=&"),
        faults.inject("reset", "GET", r"\?list-type=2&prefix=out%2Fpart-"),  # clearing the output
        faults.inject("delay", "GET", r"\?list-type=2&prefix=out%2F_progress", seconds=prompt),
        # Create-only commit: its answer is lost, the retried PUT meets the object it created (412).
        faults.inject("delay", "PUT", r"/out/_manifest\.json$", seconds=late),
    ]

    result = run_cli(*job_args(bucket, tiny_model, tmp_path))

    assert result.exit_code == 0, result.output
    assert [(r.fault, r.method, r.path.pattern, r.injected) for r in rules if r.injected < r.times] == []
    assert faults.faults() == sum(r.times for r in rules)
    assert faults.faults("reset") == 3 and faults.faults("503") == 3 and faults.faults("delay") == 5
    assert keys(s3, bucket, "out/")[:2] == ["_SUCCESS", "_manifest.json"]
    table = ds.dataset(f"{bucket}/out/", filesystem=s3fs.S3FileSystem(), format="parquet").to_table()
    assert table.column("id").to_pylist() == ids, "every row exactly once, in input order"
    assert table.column("sentiment").null_count == 0
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    assert manifest["totals"]["rows_out"] == len(ids)
    assert len(manifest["parts"]) == len([key for key in keys(s3, bucket, "out/") if key.startswith("part-")]) > 1


def test_a_refused_part_write_stops_the_job_naming_the_key(s3, bucket, tiny_model, tmp_path, faults):
    put_jsonl(s3, bucket, files=1, rows=30)
    denied = faults.inject("403", "PUT", r"/out/part-\d+\.parquet", times=1000)

    result = run_cli(*job_args(bucket, tiny_model, tmp_path))

    assert result.exit_code == 2, result.output
    assert denied.injected >= 1
    assert f"S3 refused to write s3://{bucket}/out/part-0000" in result.output
    assert "403 AccessDenied" in result.output and "s3:PutObject" in result.output
    assert "testing" not in result.output  # the fixture's key id, secret and token
    written = keys(s3, bucket, "out/")
    assert "_SUCCESS" not in written and "_manifest.json" not in written and "_lock.json" not in written


def test_a_missing_input_bucket_is_named(s3, bucket, tiny_model, tmp_path, faults):
    args = job_args(bucket, tiny_model, tmp_path)
    result = run_cli("s3://no-such-input-bucket/in/", *args[1:])
    assert result.exit_code == 2, result.output
    assert "input bucket 'no-such-input-bucket' does not exist" in result.output


def test_a_refused_output_bucket_is_not_called_missing(s3, bucket, tiny_model, tmp_path, faults):
    put_jsonl(s3, bucket, files=1, rows=5)
    faults.inject("403", "HEAD", rf"^/{bucket}$", times=100)
    result = run_cli(*job_args(bucket, tiny_model, tmp_path))
    assert result.exit_code == 2, result.output
    assert f"S3 refused to list s3://{bucket} (403 Forbidden)" in result.output
    assert "does not exist" not in result.output


def test_a_missing_output_bucket_is_named(s3, bucket, tiny_model, tmp_path, faults):
    put_jsonl(s3, bucket, files=1, rows=5)
    args = job_args(bucket, tiny_model, tmp_path)
    result = run_cli(args[0], "s3://no-such-output-bucket/out/", *args[2:])
    assert result.exit_code == 2, result.output
    assert "output bucket 'no-such-output-bucket' does not exist" in result.output


@pytest.mark.parametrize("after", [0, 2], ids=["planning-read", "worker-read"])
def test_a_refused_input_read_names_the_key(s3, bucket, tiny_model, tmp_path, faults, after):
    """after=2 lets the driver's planning reads of both files through: the worker's read is refused."""
    put_jsonl(s3, bucket, files=2, rows=5)
    denied = faults.inject("403", "GET", r"/in/part-\d\.jsonl", times=1000, after=after)
    result = run_cli(*job_args(bucket, tiny_model, tmp_path))
    assert result.exit_code == 2, result.output
    assert denied.injected >= 1
    assert f"S3 refused to read s3://{bucket}/in/part-" in result.output
    assert "(403 AccessDenied: Access Denied)" in result.output and "s3:GetObject" in result.output
