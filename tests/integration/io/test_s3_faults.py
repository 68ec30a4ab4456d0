"""Storage faults: transient S3 errors are retried, permanent ones stop the job naming the object.

Faults come from the proxy in front of moto (tests/support/s3proxy.py): the requests of the test
process and of the Dask worker processes alike get HTTP 500, 503 SlowDown, 429, connection
resets, late answers and 403 AccessDenied, and nothing of batchnlp is patched. The proxy answers
at once, so the tests cap the retry backoff at BACKOFF seconds through batchnlp's own setting
(the Dask workers a job starts inherit it); the time budget stays at its default unless a test
wants a fault to outlive it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import s3fs
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.errors import JobFailed, SpecError
from batchnlp.io.storage import Location, check_output, write_atomic
from batchnlp.util import retry
from batchnlp.util.retry import TOTAL_MAX_ATTEMPTS
from tests.support import corpus

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

READ_TIMEOUT = 2  # the job's own read timeout (a user override): late answers need not wait 30 s
DEFAULT_ATTEMPTS = 5  # botocore's own (legacy mode) attempts, which batchnlp's policy raises
BACKOFF = "0.05"  # the longest wait between two attempts here (20 s in production)
BURST = 12  # a burst of faults on one request: more than any count of attempts batchnlp ever used


@pytest.fixture
def faults(s3_proxy, monkeypatch):
    """The proxy with no rule armed before the test, and none left after it; short backoffs."""
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", retry.RETRY_SECONDS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(retry.MAX_BACKOFF_ENV, BACKOFF)
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
        # (s3fs never retries InternalError). Longer bursts: the next test.
        faults.inject("500", "PUT", r"/out/part-00001\.parquet", times=DEFAULT_ATTEMPTS),
        faults.inject("503", "PUT", r"/out/part-00002\.parquet"),
        faults.inject("delay", "PUT", r"/out/part-00002\.parquet", seconds=late),  # moto wrote it: rewritten
        faults.inject("reset", "PUT", r"/out/part-00003\.parquet"),
        faults.inject("500", "GET", r"\?list-type=2&prefix=in%2F&delimiter=%2F"),  # listing the input
        faults.inject("503", "GET", r"\?list-type=2&prefix=in%2F&delimiter=&"),
        faults.inject("reset", "GET", r"\?list-type=2&prefix=out%2F&delimiter=&"),  # taking stock of the output
        faults.inject("delay", "GET", r"\?list-type=2&prefix=out%2F&delimiter=%2F", seconds=prompt),  # is it there
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


def test_a_job_rides_out_a_burst_of_throttling_and_server_errors(s3, bucket, tiny_model, tmp_path, faults):
    """A dozen SlowDown, 429 or 500 answers in a row on one request: the time budget outlasts them.

    More than botocore's count of attempts (TOTAL_MAX_ATTEMPTS), and on requests that s3fs's own
    loop never retries (500s, 429s, a HEAD's bodyless 503), so only the budget rides them out.
    """
    ids = put_jsonl(s3, bucket, files=2, rows=30)
    assert BURST > TOTAL_MAX_ATTEMPTS
    rules = [
        faults.inject("503", "HEAD", rf"^/{bucket}$", times=BURST),  # the output check: no body, no "SlowDown"
        faults.inject("500", "GET", r"\?list-type=2&prefix=in%2F", times=BURST),  # listing the input
        faults.inject("503", "GET", r"/in/part-1\.jsonl", times=BURST, after=1),  # a worker's read
        faults.inject("503", "PUT", r"/out/part-00000\.parquet", times=BURST),
        faults.inject("500", "PUT", r"/out/part-00001\.parquet", times=BURST),
        faults.inject("429", "PUT", r"/out/part-00002\.parquet", times=BURST),
        faults.inject("500", "PUT", r"/out/_manifest\.json$", times=BURST),  # the create-only commit
    ]

    result = run_cli(*job_args(bucket, tiny_model, tmp_path))

    assert result.exit_code == 0, result.output
    assert [r.injected for r in rules] == [BURST] * len(rules)
    table = ds.dataset(f"{bucket}/out/", filesystem=s3fs.S3FileSystem(), format="parquet").to_table()
    assert table.column("id").to_pylist() == ids, "every row exactly once, in input order"
    assert keys(s3, bucket, "out/")[:2] == ["_SUCCESS", "_manifest.json"]


def test_a_fault_that_outlives_the_budget_fails_the_job_naming_the_object(
    s3, bucket, tiny_model, tmp_path, faults, monkeypatch
):
    put_jsonl(s3, bucket, files=1, rows=30)
    monkeypatch.setenv(retry.RETRY_SECONDS_ENV, "1")  # a short budget: the job's workers inherit it
    failing = faults.inject("500", "PUT", r"/out/part-00000\.parquet", times=10**6)

    result = run_cli(*job_args(bucket, tiny_model, tmp_path))

    assert result.exit_code == 1, result.output
    assert failing.injected > 1
    assert (
        f"S3 kept failing to write s3://{bucket}/out/part-00000.parquet (500 InternalError: "
        "We encountered an internal error. Please try again.) after "
    ) in result.output
    assert "run the job again (--resume keeps the finished parts)" in result.output
    written = keys(s3, bucket, "out/")
    assert "_SUCCESS" not in written and "_manifest.json" not in written


@pytest.mark.parametrize(
    ("fault", "method", "answer"), [("503", "PUT", "503 SlowDown"), ("503", "HEAD", "503 Service Unavailable")]
)
def test_throttling_that_outlives_the_budget_is_transient(s3, bucket, faults, monkeypatch, fault, method, answer):
    """s3fs's own rounds of SlowDown retries count against the same budget, then the job may be rerun."""
    monkeypatch.setenv(retry.RETRY_SECONDS_ENV, "0.5")
    location = Location(f"s3://{bucket}/out", {})
    throttled = faults.inject(fault, method, rf"^/{bucket}(/out/part-00000\.parquet)?$", times=10**6)
    with pytest.raises(JobFailed) as failed:
        if method == "PUT":
            write_atomic(location.fs, location.child("part-00000.parquet"), b"x")
        else:
            check_output(location)
    url = f"s3://{bucket}/out/part-00000.parquet" if method == "PUT" else f"s3://{bucket}"
    assert str(failed.value).startswith(f"S3 kept failing to {'write' if method == 'PUT' else 'list'} {url} ({answer}")
    assert throttled.injected > 1 and JobFailed.exit_code == 1


def test_the_budget_replaces_botocores_count_unless_the_user_sets_retries(s3_proxy, monkeypatch):
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", retry.RETRY_SECONDS_ENV, retry.MAX_BACKOFF_ENV):
        monkeypatch.delenv(name, raising=False)
    url = "s3://some-bucket/x"
    session = retry.filesystem_options(url, {})["session"]
    assert session is retry.shared_session() is retry.filesystem_options(url, {"anon": True})["session"]
    assert retry.filesystem_options(url, {"profile": "nightly"})["session"] is retry.shared_session("nightly")
    # A filesystem that travels (pickled) finds its process's session, with the handler, on arrival.
    fs = Location(url, {}).fs
    assert pickle.loads(pickle.dumps(fs)).storage_options["session"] is session
    handlers = fs.s3.meta.events._emitter._handlers.prefix_search("needs-retry.s3.PutObject")
    assert retry.needs_retry in handlers and not any("RetryHandler" in repr(h) for h in handlers)
    # The user's own retry policy, or the budget set to 0: botocore counts attempts as configured.
    assert "session" not in retry.filesystem_options(url, {"config_kwargs": {"retries": {"total_max_attempts": 2}}})
    theirs = object()
    assert retry.filesystem_options(url, {"session": theirs})["session"] is theirs
    for local in ("/local/dir", "memory://x", "simplecache::s3://b/k"):
        assert "session" not in retry.filesystem_options(local, {})
    for name, value in (("AWS_MAX_ATTEMPTS", "3"), ("AWS_RETRY_MODE", "adaptive"), (retry.RETRY_SECONDS_ENV, "0")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert "session" not in retry.filesystem_options(url, {})
    for name in (retry.RETRY_SECONDS_ENV, retry.MAX_BACKOFF_ENV):
        with monkeypatch.context() as env:
            env.setenv(name, "five minutes")
            with pytest.raises(SpecError, match=f"{name}='five minutes': expected a number of seconds"):
                Location(url, {}).split()


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
