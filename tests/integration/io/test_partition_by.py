"""--partition-by: Hive-partitioned output (OUTPUT/COL=value/.../part-NNNNN.<suffix>), end to end through the CLI.

The CLI runs share one LocalCluster (worker processes), so the model loads once for the module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.errors import SpecError
from batchnlp.spec import JobSpec
from tests.support.lake import hive_parquet

# (date, lang) directory → the ids of its rows; id 2 has no text, so it is kept with an _error.


def read_hive(path: Path) -> pa.Table:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().sort_by("id")


def files_of(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("part-*") if not p.parts[-2].startswith("_"))


def test_two_key_hive_input_round_trips_and_resumes_per_file(tmp_path, job):
    source, out = hive_parquet(tmp_path / "in"), tmp_path / "out"
    flags = ["--partition-by", "date", "--partition-by", "lang", "--rows-per-partition", 100]
    result = job(source, out, *flags)
    assert result.exit_code == 0, result.output
    files = files_of(out)
    assert files == [
        "date=2026-11-24/lang=de/part-00000.parquet",
        "date=2026-11-24/lang=en/part-00001.parquet",
        "date=2026-11-25/lang=en/part-00002.parquet",
    ]
    assert not list(out.glob("part-*")), "nothing at the top level"
    assert pq.read_schema(out / files[0]).names == ["id", "text", "sentiment", "_error"], "keys only in the path"

    # Round trip: same rows, same values, partition columns back from the paths.
    back, given = read_hive(out), read_hive(source)
    assert back.select(given.column_names).equals(given)
    for row in back.to_pylist():
        assert (row["_error"] is not None) == (row["id"] == 2), row

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["spec"]["partition_by"] == ["date", "lang"]
    listed = [f for part in manifest["parts"] for f in part["files"]]
    assert sorted(f["path"] for f in listed) == files
    for f in listed:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"]
        assert f["bytes"] == (out / f["path"]).stat().st_size
    assert sum(f["rows"] for f in listed) == manifest["totals"]["rows_out"] == 8
    assert (out / "_SUCCESS").exists()
    shown = CliRunner().invoke(main, ["inspect", str(out), "--rows", "4"])
    assert shown.exit_code == 0 and "sentiment" in shown.output and "3 files" in shown.output, shown.output

    # Interrupted: no commit, one file lost; --resume rewrites only that unit's file.
    before = {name: (out / name).read_bytes() for name in files}
    inodes = {name: (out / name).stat().st_ino for name in files}
    (out / "_SUCCESS").unlink()
    (out / "_manifest.json").unlink()
    (out / files[1]).unlink()
    resumed = job(source, out, *flags, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "2 parts kept" in resumed.output, resumed.output
    assert files_of(out) == files
    assert {name: (out / name).read_bytes() for name in files} == before, "the rewritten file: same bytes"
    assert all((out / n).stat().st_ino == inodes[n] for n in (files[0], files[2])), "kept files were not rewritten"
    assert (out / "_SUCCESS").exists()


def test_a_data_column_splits_a_unit_and_nulls_round_trip(tmp_path, job):
    source, out = tmp_path / "in.parquet", tmp_path / "out"
    langs = ["en", None, "a/b c", "en", None, "de"]
    given = pa.table({"id": list(range(6)), "text": [f"great thing {i}" for i in range(6)], "lang": langs})
    pq.write_table(given, source)
    result = job(source, out, "--partition-by", "lang")
    assert result.exit_code == 0, result.output
    assert files_of(out) == [
        "lang=__HIVE_DEFAULT_PARTITION__/part-00000.parquet",
        "lang=a%2Fb%20c/part-00000.parquet",
        "lang=de/part-00000.parquet",
        "lang=en/part-00000.parquet",
    ]
    back = read_hive(out)
    assert back.select(["id", "text", "lang"]).equals(given)
    assert pq.read_table(out / "lang=en/part-00000.parquet").column("id").to_pylist() == [0, 3], "input order"
    (part,) = json.loads((out / "_manifest.json").read_text())["parts"]
    assert part["path"] is None and [f["rows"] for f in part["files"]] == [2, 2, 1, 1], "groups by first row"

    # --overwrite without --partition-by removes the partition directories of the earlier run.
    again = job(source, out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert files_of(out) == ["part-00000.parquet"]
    assert not list(out.glob("lang=*"))


def test_unknown_partition_columns_are_refused_naming_them(tmp_path, job):
    source = hive_parquet(tmp_path / "in")
    result = job(source, tmp_path / "out", "--partition-by", "date", "--partition-by", "nope", "--partition-by", "nah")
    assert result.exit_code == 2, result.output
    assert "nope, nah" in result.output and "columns found" in result.output and "lang" in result.output
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(("column", "message"), [("sentiment", "task 'sentiment'"), ("_error", "_error")])
def test_output_columns_cannot_partition(tmp_path, column, message):
    with pytest.raises(SpecError, match=f"cannot partition by {message}"):
        JobSpec.from_settings({"input": "i", "output": "o", "partition_by": [column]})
    args = ["run", str(tmp_path / "i.parquet"), str(tmp_path / "o"), "--partition-by", column]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "cannot partition by" in result.output, result.output


def test_partition_by_is_part_of_the_fingerprint_only_when_given():
    plain = JobSpec.from_settings({"input": "i", "output": "o"})
    by = JobSpec.from_settings({"input": "i", "output": "o", "partition_by": "lang"})
    assert by.partition_by == ("lang",) and plain.partition_by == ()
    assert plain.fingerprint() != by.fingerprint()
    with pytest.raises(SpecError, match="twice"):
        JobSpec.from_settings({"input": "i", "output": "o", "partition_by": ["a", "a"]})


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_clear_removes_partitioned_part_files_only(tmp_path, where, request):
    from batchnlp.io.storage import Location, write_atomic
    from batchnlp.ledger.commit import Committer

    if where == "s3":
        bucket = request.getfixturevalue("bucket")
        url = f"s3://{bucket}/out"
    else:
        url = str(tmp_path / "out")
    committer = Committer(Location(url, {}))
    fs = committer.fs
    # What batchnlp deletes is what its job record names: three units partitioned by date and lang.
    spec = {"output_format": "parquet", "compression": "zstd", "partition_by": ["date", "lang"]}
    write_atomic(
        fs, committer.path("_progress/_job.json"), json.dumps({"run_id": "r", "units": 3, "spec": spec}).encode()
    )
    for name in (
        "date=1/lang=en/part-00000.parquet",
        "date=2/lang=de/part-00001.parquet",
        "date=3/lang=fr/part-00002.parquet",
    ):
        write_atomic(fs, committer.path(name), b"x")
    write_atomic(fs, committer.path("keep=1/notes.txt"), b"mine")
    committer.clear()
    fs.invalidate_cache()
    assert not any(fs.exists(committer.path(f"date={day}")) for day in (1, 2, 3))
    assert fs.cat_file(committer.path("keep=1/notes.txt")) == b"mine", "only part files are removed"
