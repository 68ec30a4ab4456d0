"""``batchnlp cache inspect`` and ``cache compact`` through the CLI, on local disk and on moto's S3."""

from __future__ import annotations

import json
import os
import time

from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.ledger.label_cache import LabelCache
from tests.support.label_cache import DESCRIPTIONS, SENTIMENT, TOPICS, entries

DAY = 86_400


def cache_cli(*args: str):
    result = CliRunner().invoke(main, ["cache", *args])
    assert "Traceback" not in result.output, result.output
    return result


def fill(cache: LabelCache) -> list:
    """Two nights of sentiment labels (one 40 days old) and one of topics, committed; one orphan."""
    now = int(time.time())
    files = [
        cache.write(SENTIMENT, entries(range(100)), "n1", added_at=now - 40 * DAY),
        cache.write(SENTIMENT, entries(range(100, 160)), "n2", added_at=now - 2 * DAY),
        cache.write(TOPICS, entries(range(30)), "n2", added_at=now - 2 * DAY),
    ]
    cache.commit(cache.current(), files, DESCRIPTIONS, "n2")
    cache.write(TOPICS, entries(range(900, 905)), "died")
    return files


def test_inspect_prints_the_totals_a_row_per_namespace_and_the_unreferenced_files(tmp_path):
    cache = LabelCache(str(tmp_path / "cache"))
    files = fill(cache)

    result = cache_cli("inspect", str(tmp_path / "cache"))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "version 1, committed by n2" in lines[0]
    assert lines[1].startswith("190 entries in 3 files")
    sentiment = next(line for line in lines if line.startswith(SENTIMENT))
    assert sentiment.split()[:4] == [SENTIMENT, "sentiment", "s3://models/sst2", "160"]
    assert sentiment.split()[-2:] == ["40.0d", "2.0d"]
    assert any(line.startswith(TOPICS) and " 30 " in line for line in lines)
    assert any(line.startswith("unreferenced: 1 files") for line in lines)

    figures = json.loads(cache_cli("inspect", str(tmp_path / "cache"), "--json").output)
    assert figures["entries"] == 190 and figures["bytes"] == sum(f.bytes for f in files)
    assert figures["namespaces"][TOPICS]["description"]["task"] == "classify"


def test_compact_drops_old_entries_and_a_model_then_deletes_after_the_retention(tmp_path):
    uri = str(tmp_path / "cache")
    cache = LabelCache(uri)
    files = fill(cache)

    result = cache_cli("compact", uri, "--older-than", "30", "--model", "sha256:bb22", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["expired_entries"] == 100 and summary["dropped_namespaces"] == [TOPICS]
    assert (summary["version"], summary["entries"], summary["deleted_files"]) == (2, 60, 0)
    assert all(os.path.exists(cache.path(f.path)) for f in files), "deleted within the retention"
    assert cache.current().paths == {files[1].path}  # the expired file and the model's are out

    text = cache_cli("compact", uri, "--retain-hours", "0")

    assert text.exit_code == 0, text.output
    assert "nothing to compact" not in text.output and "deleted 2 removed files" in text.output
    assert [os.path.exists(cache.path(f.path)) for f in files] == [False, True, False]
    assert json.loads(cache_cli("inspect", uri, "--json").output)["unreferenced"]["files"] == 1  # the orphan stays


def test_a_folder_that_is_no_cache_or_nothing_exits_2_naming_it(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    result = cache_cli("compact", str(tmp_path), "--retain-hours", "0")
    assert result.exit_code == 2
    assert "is not a label cache" in result.output and "data.csv" in result.output
    missing = cache_cli("inspect", str(tmp_path / "typo"))
    assert missing.exit_code == 2 and "no label cache at" in missing.output
    assert cache_cli("compact", str(tmp_path), "--retain-hours", "-1").exit_code == 2  # a usage error


def test_inspect_and_compact_a_cache_on_s3(bucket):
    uri = f"s3://{bucket}/label-cache"
    cache = LabelCache(uri)
    fill(cache)

    compacted = cache_cli("compact", uri, "--storage-option", "use_ssl=false", "--json")
    shown = cache_cli("inspect", uri, "--storage-option", "use_ssl=false")

    assert compacted.exit_code == 0 and json.loads(compacted.output)["files"] == 2, compacted.output
    assert shown.exit_code == 0, shown.output
    assert f"label cache {uri}: version 2" in shown.output and "awaiting deletion: 2 files" in shown.output
