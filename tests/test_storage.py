from __future__ import annotations

import pytest

from batchnlp.errors import InputError, OutputError
from batchnlp.redaction import redact_text, redact_url
from batchnlp.storage import Location, check_output, list_input, write_atomic, write_create_only


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
    write_create_only(location.fs, location.child("_SUCCESS"), b"{}")
    with pytest.raises(OutputError, match="already exists"):
        write_create_only(location.fs, location.child("_SUCCESS"), b"{}")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    location = Location(str(tmp_path / "out"), {})
    write_atomic(location.fs, location.child("sub/part.bin"), b"abc")
    assert (tmp_path / "out/sub/part.bin").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "out/sub").iterdir()] == ["part.bin"]


def test_s3_create_only_and_missing_bucket_is_never_created(s3, bucket):
    location = Location(f"s3://{bucket}/out", {})
    check_output(location)
    write_create_only(location.fs, location.child("_SUCCESS"), b"{}")
    with pytest.raises(OutputError, match="already exists"):
        write_create_only(location.fs, location.child("_SUCCESS"), b"{}")
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
