"""The label cache store on local disk: round trips, range lookups, racing commits, refusals, compaction."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.errors import CacheError
from batchnlp.ledger import label_cache
from batchnlp.ledger.label_cache import FORMAT, KEY_TYPE, CacheVersion, LabelCache, log_name
from tests.support.label_cache import DESCRIPTIONS, SENTIMENT, TOPICS, VALUE_TYPE, entries, keys, ranged_key, value

DAY = 86_400


@pytest.fixture
def cache(tmp_path) -> LabelCache:
    return LabelCache(str(tmp_path / "cache"))


def commit(cache: LabelCache, base: CacheVersion, files, run_id: str) -> CacheVersion:
    return cache.commit(base, files, {f.namespace: DESCRIPTIONS[f.namespace] for f in files}, run_id)


def log_files(cache: LabelCache) -> list[str]:
    return sorted(os.listdir(cache.path("_log")))


def found(cache: LabelCache, version: CacheVersion, ids, namespace: str = SENTIMENT) -> dict[bytes, dict]:
    table = cache.lookup(version, namespace, keys(ids), VALUE_TYPE).table
    return dict(zip(table["key"].to_pylist(), table["value"].to_pylist(), strict=True))


def test_written_entries_are_found_after_the_commit_and_not_before(cache):
    empty = cache.current()
    assert empty == CacheVersion(0) and not os.path.exists(cache.root)
    file = cache.write(SENTIMENT, entries(range(500)), "night-1")
    assert file.rows == 500 and file.path.startswith(f"data/{SENTIMENT}/")
    assert cache.current().version == 0, "a written file is not live before its commit"

    version = commit(cache, empty, [file], "night-1")

    assert version.version == 1 and cache.current() == version
    hits = cache.lookup(version, SENTIMENT, keys([3, 250, 499, 10_000, 20_000]), VALUE_TYPE)
    table = hits.table
    assert table.schema == pa.schema([("key", KEY_TYPE), ("value", VALUE_TYPE), ("tokens", pa.int64())])
    assert sorted(table["tokens"].to_pylist()) == [3, 250, 499]  # hits only: 10,000 and 20,000 are misses
    by_key = dict(zip(table["key"].to_pylist(), table["value"].to_pylist(), strict=True))
    expected = {keys([i])[0].as_py(): value(i) for i in (3, 250, 499)}
    assert by_key.keys() == expected.keys()
    for k, v in expected.items():
        assert by_key[k]["label"] == v["label"] and by_key[k]["score"] == pytest.approx(v["score"])
    assert table["key"].to_pylist() == sorted(table["key"].to_pylist())
    assert cache.lookup(version, TOPICS, keys([3]), VALUE_TYPE).table.num_rows == 0  # another namespace


def test_a_version_travels_as_a_record_and_a_pickle(cache):
    file = cache.write(SENTIMENT, entries(range(10)), "night-1")
    version = commit(cache, cache.current(), [file], "night-1")
    record = json.loads(json.dumps(version.to_record()))
    assert CacheVersion.from_record(record) == version
    assert pickle.loads(pickle.dumps(version)) == version
    assert pickle.loads(pickle.dumps(cache)).current() == version
    with pytest.raises(CacheError, match="newer batchnlp"):
        CacheVersion.from_record({**record, "format": FORMAT + 1}, "the stored plan")


def test_a_rerun_of_the_same_write_rewrites_the_same_file(cache):
    first = cache.write(SENTIMENT, entries(range(100)), "night-1", added_at=1_700_000_000)
    data = Path(cache.path(first.path)).read_bytes()
    shuffled = entries(reversed(range(100)))
    second = cache.write(SENTIMENT, shuffled, "night-1", added_at=1_700_000_000)
    assert second.path == first.path and Path(cache.path(second.path)).read_bytes() == data
    assert cache.write(SENTIMENT, entries(range(100)), "night-2").path != first.path  # another run: another name


def test_a_lookup_opens_only_the_files_and_row_groups_that_can_hold_its_keys(cache, monkeypatch):
    monkeypatch.setattr(label_cache, "ROW_GROUP_ROWS", 2_000)  # ten row groups in a file of 20,000 entries
    rows = range(20_000)
    files = [
        cache.write(SENTIMENT, entries(rows, key_of=lambda i, band=band: ranged_key(band, i)), f"n{band}")
        for band in (0x10, 0x50, 0x90, 0xD0)
    ]
    files.append(cache.write(TOPICS, entries(rows, key_of=lambda i: ranged_key(0x50, i)), "t"))
    version = commit(cache, cache.current(), files, "night-1")
    target = files[1]
    assert pq.ParquetFile(cache.path(target.path)).metadata.num_row_groups == 10

    wanted = pa.array(sorted(ranged_key(0x50, i) for i in (7, 11)), KEY_TYPE)
    hits = cache.lookup(version, SENTIMENT, wanted, VALUE_TYPE)

    assert sorted(hits.table["tokens"].to_pylist()) == [7, 11]
    assert hits.files_opened == 1, "files of other key ranges and namespaces were opened"
    assert 1 <= hits.row_groups_read <= 2  # the row groups whose key range holds 7 or 11, of 10
    assert 0 < hits.bytes_read < target.bytes / 2  # the footer (one 64 KiB read) and those row groups
    nowhere = pa.array([bytes([0x30]) + bytes(15)], KEY_TYPE)  # between two files' key ranges
    assert cache.lookup(version, SENTIMENT, nowhere, VALUE_TYPE).files_opened == 0
    band = pa.array(sorted(ranged_key(0x90, i) for i in rows), KEY_TYPE)
    every = cache.lookup(version, SENTIMENT, band, VALUE_TYPE)
    assert every.table.num_rows == 20_000 and every.row_groups_read == 10 and every.files_opened == 1


def test_unsorted_repeated_keys_are_looked_up_once(cache):
    file = cache.write(SENTIMENT, entries(range(50)), "night-1")
    version = commit(cache, cache.current(), [file], "night-1")
    messy = pa.concat_arrays([keys([9, 3], sort=False), keys([3, 9, 70], sort=False)])
    assert sorted(cache.lookup(version, SENTIMENT, messy, VALUE_TYPE).table["tokens"].to_pylist()) == [3, 9]


def test_a_stored_value_of_another_type_is_refused_not_cast(cache):
    file = cache.write(SENTIMENT, entries(range(10)), "night-1")
    version = commit(cache, cache.current(), [file], "night-1")
    other = pa.struct([("label", pa.string()), ("score", pa.float64())])
    with pytest.raises(CacheError, match=rf"{file.path}.*stores values of type .*float.*gives .*double"):
        cache.lookup(version, SENTIMENT, keys([1]), other)


def test_two_nights_committing_from_the_same_base_both_land(cache):
    base = cache.current()
    first = cache.write(SENTIMENT, entries(range(0, 100)), "night-a")
    second = cache.write(TOPICS, entries(range(100, 200)), "night-b")

    a = commit(cache, base, [first], "night-a")
    b = commit(cache, base, [second], "night-b")  # loses version 1, rebases on it

    assert (a.version, b.version) == (1, 2)
    assert b.paths == {first.path, second.path} and set(b.namespaces) == {SENTIMENT, TOPICS}
    assert len(found(cache, b, range(100))) == 100 and len(found(cache, b, range(100, 200), TOPICS)) == 100


def test_many_racing_commits_all_land_and_nothing_is_lost(cache):
    files = [cache.write(SENTIMENT, entries(range(i * 10, i * 10 + 10)), f"night-{i}") for i in range(6)]
    base = cache.current()
    start = threading.Barrier(len(files))
    results: dict[int, CacheVersion] = {}

    def night(i: int) -> None:
        start.wait()
        results[i] = commit(cache, base, [files[i]], f"night-{i}")

    threads = [threading.Thread(target=night, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(v.version for v in results.values()) == list(range(1, 7))
    latest = cache.current()
    assert latest.version == 6 and latest.paths == {f.path for f in files}
    assert len(found(cache, latest, range(60))) == 60
    assert log_files(cache) == [f"{i:020d}.json" for i in range(1, 7)]


def test_a_retried_commit_returns_its_version_and_writes_no_other(cache):
    base = cache.current()
    file = cache.write(SENTIMENT, entries(range(20)), "night-1")
    first = commit(cache, base, [file], "night-1")
    assert commit(cache, base, [file], "night-1") == first  # the commit job ran again
    other = cache.write(SENTIMENT, entries(range(20, 40)), "night-2")
    commit(cache, first, [other], "night-2")
    assert commit(cache, base, [file], "night-1") == first  # another night committed between the two
    latest = cache.current()
    assert commit(cache, latest, [file], "night-1") == latest  # the retry read the latest version: no new one
    assert log_files(cache) == [log_name(1)[5:], log_name(2)[5:]]
    cache.compact()  # the file is removed from the live list
    assert commit(cache, latest, [file], "night-1").version == 3, "a removed file came back"
    assert file.path not in cache.current().paths and len(log_files(cache)) == 3


def test_an_empty_commit_commits_nothing(cache):
    assert cache.commit(cache.current(), [], {}, "night-1") == CacheVersion(0)
    assert not os.path.exists(cache.path("_log"))


def test_a_commit_names_only_files_that_were_written(cache):
    file = cache.write(SENTIMENT, entries(range(20)), "night-1")
    os.remove(cache.path(file.path))
    with pytest.raises(CacheError, match="never written"):
        commit(cache, cache.current(), [file], "night-1")
    assert cache.current().version == 0


def test_a_log_of_a_newer_format_or_not_json_is_refused_with_its_name(cache):
    file = cache.write(SENTIMENT, entries(range(20)), "night-1")
    version = commit(cache, cache.current(), [file], "night-1")
    newer = {**json.loads(Path(cache.path(log_name(1))).read_text()), "version": 2, "format": FORMAT + 1}
    with open(cache.path(log_name(2)), "w") as handle:
        json.dump(newer, handle)
    with pytest.raises(CacheError, match=r"00000000000000000002\.json was written by a newer batchnlp.*upgrade"):
        cache.current()
    with pytest.raises(CacheError, match="upgrade batchnlp"):
        commit(cache, version, [cache.write(SENTIMENT, entries(range(5)), "night-2")], "night-2")
    assert log_files(cache) == [log_name(1)[5:], log_name(2)[5:]]  # nothing committed over it
    with open(cache.path(log_name(2)), "w") as handle:
        handle.write('{"format": 1, "version": 2, "files": [')
    with pytest.raises(CacheError, match=r"00000000000000000002\.json is not valid JSON"):
        cache.current()


def test_a_folder_that_is_no_cache_is_refused_and_left_alone(tmp_path):
    data = tmp_path / "someones-data"
    data.mkdir()
    (data / "customers.csv").write_text("id,name\n1,a\n")
    cache = LabelCache(str(data))
    with pytest.raises(CacheError, match=r"is not a label cache: it holds customers\.csv"):
        cache.current()
    with pytest.raises(CacheError, match="not a label cache"):
        cache.write(SENTIMENT, entries(range(5)), "night-1")
    assert sorted(os.listdir(data)) == ["customers.csv"]

    output = tmp_path / "labelled"
    output.mkdir()
    for name in ("_SUCCESS", "_manifest.json", "part-00000.parquet"):
        (output / name).write_bytes(b"x")
    with pytest.raises(CacheError, match="looks like a batchnlp run's output"):
        LabelCache(str(output)).inspect()
    with pytest.raises(CacheError, match="no label cache at"):
        LabelCache(str(tmp_path / "typo")).inspect()


def test_a_missing_live_file_is_named(cache):
    file = cache.write(SENTIMENT, entries(range(20)), "night-1")
    version = commit(cache, cache.current(), [file], "night-1")
    os.remove(cache.path(file.path))
    with pytest.raises(CacheError, match=rf"{file.path}, live in the cache's log, is missing"):
        cache.lookup(version, SENTIMENT, keys([1]), VALUE_TYPE)


def test_inspect_counts_entries_ages_namespaces_and_unreferenced_files(cache):
    now = int(time.time())
    old = cache.write(SENTIMENT, entries(range(100)), "night-1", added_at=now - 10 * DAY)
    new = cache.write(SENTIMENT, entries(range(100, 130)), "night-2", added_at=now - DAY)
    topics = cache.write(TOPICS, entries(range(40)), "night-2", added_at=now - DAY)
    commit(cache, cache.current(), [old, new, topics], "night-2")
    orphan = cache.write(TOPICS, entries(range(500, 520)), "night-3")  # a night that died before its commit

    info = cache.inspect()

    assert (info["version"], info["files"], info["entries"]) == (1, 3, 170)
    assert info["bytes"] == old.bytes + new.bytes + topics.bytes
    sentiment = info["namespaces"][SENTIMENT]
    assert sentiment["description"] == DESCRIPTIONS[SENTIMENT]
    assert (sentiment["files"], sentiment["entries"]) == (2, 130)
    assert sentiment["oldest_age_s"] == pytest.approx(10 * DAY, abs=60)
    assert sentiment["newest_age_s"] == pytest.approx(DAY, abs=60)
    assert info["namespaces"][TOPICS]["entries"] == 40
    assert info["unreferenced"] == {"files": 1, "bytes": orphan.bytes, "paths": [orphan.path]}
    assert info["awaiting_deletion"] == {"files": 0, "bytes": 0}
    json.dumps(info)


def test_compaction_drops_old_entries_and_a_model_and_keeps_ages(cache):
    now = int(time.time())
    files = [
        cache.write(SENTIMENT, entries(range(0, 50)), "n1", added_at=now - 40 * DAY),  # all expired
        cache.write(SENTIMENT, entries(range(50, 100)), "n2", added_at=now - 5 * DAY),
        cache.write(SENTIMENT, entries(range(100, 150)), "n3", added_at=now - DAY),
        cache.write(SENTIMENT, entries(range(140, 160)), "n4", added_at=now - 2 * DAY),  # 140-149 again
        cache.write(TOPICS, entries(range(30)), "n1", added_at=now - DAY),
    ]
    commit(cache, cache.current(), files, "n4")

    summary = cache.compact(older_than_days=30, model="s3://models/topics")

    latest = cache.current()
    assert summary["version"] == latest.version == 2 and summary["committed"]
    assert summary["expired_entries"] == 50 and summary["duplicate_entries"] == 10
    assert summary["dropped_namespaces"] == [TOPICS] and TOPICS not in latest.namespaces
    assert [f.namespace for f in latest.files] == [SENTIMENT]  # one file: fewer, larger
    assert latest.files[0].rows == 110
    assert len(found(cache, latest, range(0, 50))) == 0, "expired entries are dropped"
    assert len(found(cache, latest, range(50, 160))) == 110
    assert cache.lookup(latest, TOPICS, keys(range(30)), VALUE_TYPE).table.num_rows == 0
    info = cache.inspect()["namespaces"][SENTIMENT]
    assert info["oldest_age_s"] == pytest.approx(5 * DAY, abs=60), "entry ages survive compaction"
    assert info["newest_age_s"] == pytest.approx(DAY, abs=60)
    added = pq.read_table(cache.path(latest.files[0].path)).to_pydict()
    ages = dict(zip(added["tokens"], added["added_at"], strict=True))
    assert ages[60] == now - 5 * DAY and ages[120] == now - DAY and ages[145] == now - DAY  # the newest copy


def test_compaction_writes_sorted_files_of_disjoint_key_slices_and_loses_no_entry(cache, monkeypatch):
    monkeypatch.setattr(label_cache, "ROW_GROUP_ROWS", 50)
    monkeypatch.setattr(label_cache, "COMPACT_FILE_ROWS", 100)
    big = cache.write(SENTIMENT, entries(range(300)), "n1")  # six row groups, read slice by slice
    small = [cache.write(SENTIMENT, entries(range(i, i + 40)), f"n{i}") for i in (280, 320, 360)]  # read once
    commit(cache, cache.current(), [big, *small], "n4")

    summary = cache.compact()

    latest = cache.current()
    assert summary["duplicate_entries"] == 20 and summary["entries"] == 400
    assert len(latest.files) == summary["written_files"] >= 4  # ceil(420 / 100) slices of the key space
    ranges = sorted((f.min_key, f.max_key) for f in latest.files)
    assert all(high < next_low for (_, high), (next_low, _) in pairwise(ranges))
    for file in latest.files:
        stored = pq.read_table(cache.path(file.path))["key"].to_pylist()
        assert stored == sorted(stored) and len(set(stored)) == len(stored) == file.rows
    assert len(found(cache, latest, range(400))) == 400
    assert cache.compact()["committed"] is False, "compacted files were rewritten again"
    commit(cache, latest, [cache.write(SENTIMENT, entries(range(400, 410)), "n5")], "n5")
    assert cache.compact()["written_files"] >= 4  # a night's small file: the namespace is merged again


def test_compaction_deletes_removed_files_only_after_the_retention_and_never_an_orphan(cache):
    night_1 = cache.write(SENTIMENT, entries(range(50)), "n1")
    night_2 = cache.write(SENTIMENT, entries(range(50, 100)), "n2")
    commit(cache, cache.current(), [night_1, night_2], "n2")
    reader = cache.current()  # a night that looks up while the cache is compacted
    orphan = cache.write(SENTIMENT, entries(range(900, 910)), "died")
    stray = cache.path("data/notes.txt")
    Path(stray).write_text("someone's file")

    first = cache.compact()

    assert first["removed_files"] == 2 and first["deleted_files"] == 0
    assert os.path.exists(cache.path(night_1.path)) and os.path.exists(cache.path(night_2.path))
    assert len(found(cache, reader, range(100))) == 100, "a reader of the older version still finds its files"
    assert cache.inspect()["awaiting_deletion"]["files"] == 2
    assert cache.compact(retain_hours=1)["deleted_files"] == 0  # removed seconds ago: kept

    last = cache.compact(retain_hours=0)

    assert last["deleted_files"] == 2 and last["deleted_bytes"] == night_1.bytes + night_2.bytes
    assert not os.path.exists(cache.path(night_1.path)) and not os.path.exists(cache.path(night_2.path))
    assert os.path.exists(cache.path(orphan.path)) and os.path.exists(stray), "files no log named are never deleted"
    assert len(found(cache, cache.current(), range(100))) == 100
    info = cache.inspect()
    assert info["awaiting_deletion"]["files"] == 0 and info["unreferenced"]["files"] == 2
    assert cache.compact(retain_hours=0)["committed"] is False  # nothing left to do: no new version


def test_a_night_committing_during_a_compaction_keeps_the_compaction(cache):
    night_1 = cache.write(SENTIMENT, entries(range(50)), "n1")
    night_2 = cache.write(SENTIMENT, entries(range(50, 100)), "n2")
    commit(cache, cache.current(), [night_1, night_2], "n2")
    base = cache.current()  # tonight's run starts from version 1
    tonight = cache.write(SENTIMENT, entries(range(100, 120)), "n3")
    cache.compact()  # version 2: night_1 and night_2 replaced by one file

    latest = commit(cache, base, [tonight], "n3")

    assert latest.version == 3
    assert night_1.path not in latest.paths and night_2.path not in latest.paths, "the compaction was undone"
    assert tonight.path in latest.paths and len(latest.files) == 2
    assert len(found(cache, latest, range(120))) == 120


def test_a_compaction_racing_a_night_rebases_on_it(cache, monkeypatch):
    commit(cache, cache.current(), [cache.write(SENTIMENT, entries(range(50)), "n1")], "n1")
    commit(cache, cache.current(), [cache.write(SENTIMENT, entries(range(50, 90)), "n2")], "n2")
    tonight = cache.write(SENTIMENT, entries(range(90, 99)), "n3")
    create_log = LabelCache.create_log

    def night_first(self, entry):  # the night's commit lands between the compaction's plan and its commit
        if entry.operation == "compact" and self.current().version == 2:
            commit(cache, cache.current(), [tonight], "n3")
        return create_log(self, entry)

    monkeypatch.setattr(LabelCache, "create_log", night_first)
    summary = cache.compact()

    latest = cache.current()
    assert summary["version"] == latest.version == 4
    assert tonight.path in latest.paths and len(latest.files) == 2
    assert len(found(cache, latest, range(99))) == 99


def test_compacting_a_cache_with_no_commit_does_nothing(cache):
    orphan = cache.write(SENTIMENT, entries(range(10)), "died")  # the first night died before its commit
    assert cache.compact(older_than_days=0, retain_hours=0)["committed"] is False
    assert cache.inspect()["version"] == 0 and not os.path.exists(cache.path("_log"))
    assert os.path.exists(cache.path(orphan.path))
