from __future__ import annotations

import pytest

from batchnlp.errors import InputError, JobFailed, OutputError
from batchnlp.io.storage import Location, check_output, create_only, list_input, write_atomic, write_create_only
from batchnlp.util import retry
from batchnlp.util.redaction import redact_text, redact_url


def test_listing_a_directory_a_glob_and_a_file(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "_SUCCESS", ".hidden.jsonl", "sub/c.jsonl", "_rejected/x.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    names = lambda files: [f.path.rsplit(str(tmp_path), 1)[-1] for f in files]  # noqa: E731
    assert names(list_input(Location(str(tmp_path), {}))) == ["/a.jsonl", "/b.jsonl", "/sub/c.jsonl"]
    assert names(list_input(Location(str(tmp_path / "*.jsonl"), {}))) == ["/a.jsonl", "/b.jsonl"]
    assert names(list_input(Location(f"file://{tmp_path}/a.jsonl", {}))) == ["/a.jsonl"]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_input(Location(str(tmp_path / "nope.jsonl"), {}))
    with pytest.raises(InputError, match="matches no files"):
        list_input(Location(str(tmp_path / "*.parquet"), {}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is empty"):
        list_input(Location(str(tmp_path / "empty"), {}))


def test_create_only_refuses_an_existing_file(tmp_path):
    location = Location(str(tmp_path), {})
    write_create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "a"}')
    with pytest.raises(OutputError, match="already exists"):
        write_create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "b"}')
    # The same bytes again are the writer's own object (a retried PUT meeting its first attempt).
    assert create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "a"}')


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    location = Location(str(tmp_path / "out"), {})
    write_atomic(location.fs, location.child("sub/part.bin"), b"abc")
    assert (tmp_path / "out/sub/part.bin").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "out/sub").iterdir()] == ["part.bin"]


def test_s3_create_only_and_missing_bucket_is_never_created(s3, bucket):
    location = Location(f"s3://{bucket}/out", {})
    check_output(location)
    write_create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "a"}')
    with pytest.raises(OutputError, match="already exists"):
        write_create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "b"}')
    with pytest.raises(ValueError, match="non-empty body"):
        write_create_only(location.fs, location.child("_EMPTY"), b"")
    with pytest.raises(OutputError, match="output bucket 'no-such-bucket-x' does not exist"):
        check_output(Location("s3://no-such-bucket-x/out/", {}))
    assert "no-such-bucket-x" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_redaction():
    assert redact_url("s3://key:secret@bucket/p?X-Amz-Signature=abc") == "s3://bucket/p"
    assert redact_url("/local/path?x") == "/local/path?x"
    text = "key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY url ?X-Amz-Signature=deadbeef"
    masked = redact_text(text)
    assert "AKIAIOSFODNN7EXAMPLE" not in masked
    assert "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" not in masked
    assert "deadbeef" not in masked
    assert redact_text("/tmp/pytest-of-root/out/part-00000.parquet") == "/tmp/pytest-of-root/out/part-00000.parquet"


@pytest.fixture
def faults(s3_proxy):
    s3_proxy.clear()
    yield s3_proxy
    s3_proxy.clear()


def test_the_retry_policy_goes_under_s3_options_and_the_user_wins(monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    ours = {"connect_timeout": 10, "read_timeout": 30, "retries": {"mode": "standard", "total_max_attempts": 8}}
    assert retry.storage_options_for("s3://b/k", {"anon": True}) == {"anon": True, "config_kwargs": ours}
    user = {"config_kwargs": {"read_timeout": 120, "retries": {"max_attempts": 2}}}
    assert retry.storage_options_for("s3a://b/k", user)["config_kwargs"] == {
        "connect_timeout": 10,
        "read_timeout": 120,
        "retries": {"mode": "standard", "max_attempts": 2},  # not our total_max_attempts, which botocore prefers
    }
    for url in ("/local/dir", "file:///x", "memory://x", "simplecache::s3://b/k"):
        assert retry.storage_options_for(url, {"a": 1}) == {"a": 1}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "12")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert retry.storage_options_for("s3://b/k", {})["config_kwargs"]["retries"] == {}


def test_s3_filesystems_of_a_location_carry_the_policy(s3_proxy, monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    config = Location("s3://some-bucket/x", {}).fs.s3.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": retry.TOTAL_MAX_ATTEMPTS}
    assert (config.connect_timeout, config.read_timeout) == (retry.CONNECT_TIMEOUT, retry.READ_TIMEOUT)
    shown = repr(Location("s3://k:hunter2@b/x", {"secret": "hunter2"}))  # Dask logs a failed task's arguments
    assert "hunter2" not in shown and "s3://b/x" in shown


def test_a_create_only_write_whose_answer_came_late_is_ours(s3, bucket, faults):
    """The PUT lands, its answer misses the read timeout, the retried PUT gets 412: the object is ours."""
    location = Location(f"s3://{bucket}/out", {"config_kwargs": {"read_timeout": 1}})
    late = faults.inject("delay", "PUT", r"/out/_SUCCESS$", seconds=2)
    assert create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "a"}')
    assert late.injected == 1 and faults.count("PUT", "/out/_SUCCESS") == 2
    assert not create_only(location.fs, location.child("_SUCCESS"), b'{"run_id": "b"}')


def test_refusals_name_the_operation_and_the_object(s3, bucket, faults):
    location = Location(f"s3://{bucket}/out", {})
    faults.inject("403", "PUT", r"/out/part-00003\.parquet$", times=100)
    with pytest.raises(OutputError) as refused:
        write_atomic(location.fs, location.child("part-00003.parquet"), b"x")
    assert str(refused.value) == (
        f"S3 refused to write s3://{bucket}/out/part-00003.parquet (403 AccessDenied: Access Denied): "
        "check that the job's credentials allow s3:PutObject there"
    )
    faults.inject("403", "GET", rf"^/{bucket}\?list-type=2", times=100)
    with pytest.raises(InputError, match=rf"S3 refused to list s3://{bucket}/in \(403 AccessDenied"):
        list_input(Location(f"s3://{bucket}/in/", {}))
    faults.inject("403", "HEAD", rf"^/{bucket}$", times=100)
    with pytest.raises(OutputError, match=rf"S3 refused to list s3://{bucket} \(403 Forbidden\)"):
        check_output(location)  # not "does not exist": fs.exists answers False to a 403
    for url in ("s3://no-such-input-x/in/", "s3://no-such-input-x/in/*.jsonl", "s3://no-such-input-x/in/a.jsonl"):
        with pytest.raises(InputError, match="input bucket 'no-such-input-x' does not exist"):
            list_input(Location(url, {}))


def test_a_failure_that_outlives_the_retries_is_transient(s3, bucket, faults):
    location = Location(f"s3://{bucket}/out", {"config_kwargs": {"retries": {"total_max_attempts": 2}}})
    failing = faults.inject("500", "PUT", r"/out/part-00000\.parquet$", times=100)
    with pytest.raises(
        JobFailed, match=r"S3 kept failing to write .*part-00000.parquet \(500 InternalError.*after 2 attempts"
    ):
        write_atomic(location.fs, location.child("part-00000.parquet"), b"x")
    assert failing.injected == 2 and JobFailed.exit_code == 1
