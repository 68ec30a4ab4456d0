"""The label cache on moto's S3 server over HTTP: the round trip, racing commits, and S3 faults.

Faults come from the proxy in front of moto (tests/support/s3proxy.py); nothing of batchnlp or
s3fs is patched. The proxy answers at once, so the retry backoff is capped short through
batchnlp's own setting.
"""

from __future__ import annotations

import threading

import pytest

from batchnlp.errors import JobFailed
from batchnlp.ledger.label_cache import CacheVersion, LabelCache, log_name
from batchnlp.util import retry
from tests.support.label_cache import DESCRIPTIONS, SENTIMENT, VALUE_TYPE, entries, keys


@pytest.fixture
def faults(s3_proxy, monkeypatch):
    """The proxy with no rule armed before the test, and none left after it; short backoffs."""
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", retry.RETRY_SECONDS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(retry.MAX_BACKOFF_ENV, "0.05")
    s3_proxy.clear()
    yield s3_proxy
    s3_proxy.clear()


def log_keys(s3, bucket: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="cache/_log/").get("Contents", [])
    return sorted(item["Key"].removeprefix("cache/") for item in listing)


def night(cache: LabelCache, base: CacheVersion, ids, run_id: str) -> CacheVersion:
    file = cache.write(SENTIMENT, entries(ids), run_id)
    return cache.commit(base, [file], {SENTIMENT: DESCRIPTIONS[SENTIMENT]}, run_id)


def test_round_trip_compaction_and_retention_on_s3(s3, bucket):
    cache = LabelCache(f"s3://{bucket}/cache")
    assert cache.current() == CacheVersion(0)
    first = night(cache, cache.current(), range(0, 300), "n1")
    second = night(cache, first, range(300, 600), "n2")

    hits = cache.lookup(second, SENTIMENT, keys([5, 450, 10_000]), VALUE_TYPE)

    assert sorted(hits.table["tokens"].to_pylist()) == [5, 450]
    assert hits.files_opened == 2 and hits.bytes_read > 0
    assert log_keys(s3, bucket) == [log_name(1), log_name(2)]
    summary = cache.compact()
    assert summary["files"] == 1 and summary["entries"] == 600
    assert cache.lookup(second, SENTIMENT, keys([5]), VALUE_TYPE).table.num_rows == 1  # the old version still reads
    assert cache.compact(retain_hours=0)["deleted_files"] == 2
    latest = cache.current()
    assert cache.lookup(latest, SENTIMENT, keys(range(600)), VALUE_TYPE).table.num_rows == 600
    data = s3.list_objects_v2(Bucket=bucket, Prefix="cache/data/")["Contents"]
    assert [item["Key"] for item in data] == [f"cache/{latest.files[0].path}"]


def test_racing_commits_on_s3_all_land(bucket):
    cache = LabelCache(f"s3://{bucket}/cache")
    files = [cache.write(SENTIMENT, entries(range(i * 20, i * 20 + 20)), f"n{i}") for i in range(5)]
    base, start, errors = cache.current(), threading.Barrier(len(files)), []

    def commit(i: int) -> None:
        try:
            start.wait()
            LabelCache(cache.location.url).commit(base, [files[i]], DESCRIPTIONS, f"n{i}")
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    latest = cache.current()
    assert latest.version == 5 and latest.paths == {f.path for f in files}
    assert cache.lookup(latest, SENTIMENT, keys(range(100)), VALUE_TYPE).table.num_rows == 100


def test_a_commit_rides_out_slowdown_on_its_log_write(s3, bucket, faults):
    cache = LabelCache(f"s3://{bucket}/cache")
    file = cache.write(SENTIMENT, entries(range(50)), "n1")
    faults.inject("503", "PUT", r"/cache/_log/00000000000000000001\.json", times=4)

    version = cache.commit(cache.current(), [file], DESCRIPTIONS, "n1")

    assert faults.faults("503", "PUT") == 4
    assert version.version == 1 and log_keys(s3, bucket) == [log_name(1)]
    assert cache.lookup(cache.current(), SENTIMENT, keys([7]), VALUE_TYPE).table.num_rows == 1


def test_a_commit_that_s3_answers_with_a_conditional_conflict_tries_again(s3, bucket, faults):
    """S3 answers 409 ConditionalRequestConflict to a create-only PUT racing another on the same key:
    the commit lost that race, reads the latest version again and commits on top of it."""
    cache = LabelCache(f"s3://{bucket}/cache")
    file = cache.write(SENTIMENT, entries(range(50)), "n1")
    faults.inject("409", "PUT", r"/cache/_log/00000000000000000001\.json", times=1)

    version = cache.commit(cache.current(), [file], DESCRIPTIONS, "n1")

    assert faults.faults("409", "PUT") == 1
    assert version.version == 1 and log_keys(s3, bucket) == [log_name(1)]


def test_a_commit_whose_answer_came_too_late_is_committed_once(s3, bucket, faults):
    """moto writes the log file, its answer outlives the read timeout, botocore sends the PUT again:
    the retry finds the object holding exactly its bytes, so the commit counts as done (no version 2)."""
    options = {"config_kwargs": {"read_timeout": 1}}
    cache = LabelCache(f"s3://{bucket}/cache", options)
    file = cache.write(SENTIMENT, entries(range(50)), "n1")
    faults.inject("delay", "PUT", r"/cache/_log/", times=1, seconds=2.5)

    version = cache.commit(cache.current(), [file], DESCRIPTIONS, "n1")

    assert faults.faults("delay", "PUT") == 1 and faults.count("PUT", "/cache/_log/") >= 2
    assert version.version == 1 and log_keys(s3, bucket) == [log_name(1)]


def test_a_store_that_keeps_failing_stops_the_commit_as_retryable(s3, bucket, faults, monkeypatch):
    monkeypatch.setenv(retry.RETRY_SECONDS_ENV, "1")
    cache = LabelCache(f"s3://{bucket}/cache")
    file = cache.write(SENTIMENT, entries(range(10)), "n1")
    faults.inject("500", "PUT", r"/cache/_log/", times=1_000)

    with pytest.raises(JobFailed, match=r"00000000000000000001\.json.*500 InternalError"):
        cache.commit(cache.current(), [file], DESCRIPTIONS, "n1")

    assert log_keys(s3, bucket) == []
