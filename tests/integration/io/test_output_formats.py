"""Output formats (parquet, arrow, jsonl) and Hive-partitioned input, end to end through the CLI.

The CLI runs share one LocalCluster (worker processes), so the model loads once for the module.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.errors import InputError, SpecError
from batchnlp.io.formats import ReadOptions, plan_units, read_unit
from batchnlp.io.formats.jsonl import write as write_jsonl
from batchnlp.io.formats.writers import OutputFormat
from batchnlp.io.storage import Location, list_input
from batchnlp.spec import JobSpec
from tests.support.lake import LAYOUT, TEXTS, hive_parquet

# (date, lang) directory → the ids of its rows; id 2 has no text, so it is kept with an _error.


def expected_partitions() -> dict[int, tuple[str, str]]:
    return {i: key for key, ids in LAYOUT.items() for i in ids}


def read_parts(out: Path, fmt: str, compression: str) -> list[dict]:
    """Every output row, read with the format's usual reader."""
    if fmt == "parquet":
        return ds.dataset(out, format="parquet").to_table().to_pylist()
    if fmt == "arrow":
        return ds.dataset(sorted(map(str, out.glob("part-*.arrow"))), format="arrow").to_table().to_pylist()
    opener = gzip.open if compression == "gzip" else open
    rows = []
    for path in sorted(out.glob("part-*.jsonl*")):
        with opener(path, "rt", encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle)
    return rows


def check_rows(rows: list[dict]) -> None:
    """Rows out == rows in, each with its partition values; the row without text has its reason."""
    assert sorted(r["id"] for r in rows) == list(range(8))
    partitions = expected_partitions()
    for row in rows:
        assert (row["date"], row["lang"]) == partitions[row["id"]], row
        assert row["text"] == TEXTS[row["id"]]
        if row["id"] == 2:
            assert row["_error"] and row["sentiment"] is None, row
        else:
            assert row["_error"] is None and row["sentiment"]["label"], row


FORMATS = [("parquet", "snappy"), ("arrow", "none"), ("jsonl", "gzip")]


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
def test_each_output_format_commits_reads_back_and_resumes(tmp_path, job, fmt, compression):
    source, out = hive_parquet(tmp_path / "in"), tmp_path / "out"
    flags = ["--output-format", fmt, "--compression", compression, "--rows-per-partition", 100]
    result = job(source, out, *flags)
    assert result.exit_code == 0, result.output
    suffix = OutputFormat(fmt, compression).suffix
    parts = sorted(p.name for p in out.glob("part-*"))
    assert parts == [f"part-{i:05d}{suffix}" for i in range(3)], "one part per file, the format's suffix"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["output"] == {"format": fmt, "compression": compression, "suffix": suffix}
    assert manifest["input"]["partitions"] == {"date": "string", "lang": "string"}
    for part in manifest["parts"]:
        assert hashlib.sha256((out / part["path"]).read_bytes()).hexdigest() == part["sha256"]
    assert (out / "_SUCCESS").exists()
    check_rows(read_parts(out, fmt, compression))
    if fmt == "parquet":
        column = pq.ParquetFile(out / parts[0]).metadata.row_group(0).column(0)
        assert column.compression == "SNAPPY"
        assert b"batchnlp" in pq.read_schema(out / parts[0]).metadata
    if fmt == "arrow":
        check_arrow_readers(out, tmp_path)
    if fmt == "jsonl":
        assert (out / parts[0]).read_bytes()[4:8] == b"\0\0\0\0", "gzip mtime 0: same input, same bytes"
    shown = CliRunner().invoke(main, ["inspect", str(out), "--rows", "2"])
    assert shown.exit_code == 0 and "sentiment" in shown.output, shown.output

    # An interrupted run: no commit, one part lost, one torn; --resume keeps the intact one.
    before = {name: (out / name).read_bytes() for name in parts}
    kept_inode = (out / parts[0]).stat().st_ino
    (out / "_SUCCESS").unlink()
    (out / "_manifest.json").unlink()
    (out / parts[1]).unlink()
    (out / parts[2]).write_bytes(b"torn")
    resumed = job(source, out, *flags, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "1 parts kept" in resumed.output or "1 part kept" in resumed.output, resumed.output
    assert (out / parts[0]).stat().st_ino == kept_inode, "the intact part was not rewritten"
    assert {name: (out / name).read_bytes() for name in parts} == before, "rewritten parts: same bytes"


def check_arrow_readers(out: Path, tmp_path: Path) -> None:
    """The IPC file format loads unchanged with pyarrow.dataset, polars and datasets."""
    import datasets
    import polars as pl

    files = sorted(str(p) for p in out.glob("part-*.arrow"))
    table = ds.dataset(files, format="arrow").to_table()
    assert table.num_rows == 8 and b"batchnlp" in table.schema.metadata
    frames = [pl.read_ipc(f) for f in files]
    assert sum(f.height for f in frames) == 8
    scanned = pl.scan_ipc(str(out / "part-*.arrow")).collect()
    check_rows(scanned.to_dicts())
    loaded = datasets.load_dataset("arrow", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    check_rows(loaded.to_list())


def test_hive_jsonl_input_on_s3_to_gzipped_jsonl(s3, bucket, job):
    """JSONL input under year=/lang= prefixes: int32 and string partition columns, output on S3."""
    layout = {("2026", "en"): [0, 1], ("2026", "fr"): [2], ("2025", "en"): [3, 4, 5]}
    for (year, lang), ids in layout.items():
        body = "".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in ids)
        s3.put_object(Bucket=bucket, Key=f"in/year={year}/lang={lang}/data.jsonl", Body=body.encode())
    s3.put_object(Bucket=bucket, Key="in/loose.jsonl", Body=b'{"id": 6, "text": "no partition"}\n')
    result = job(f"s3://{bucket}/in/", f"s3://{bucket}/out", "--output-format", "jsonl", "--compression", "gzip")
    assert result.exit_code == 0, result.output
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
    parts = [k for k in keys if k.startswith("out/part-")]
    assert parts and all(k.endswith(".jsonl.gz") for k in parts) and "out/_SUCCESS" in keys
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    assert manifest["input"]["partitions"] == {"year": "int32", "lang": "string"}
    rows = []
    for key in parts:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() in {p["sha256"] for p in manifest["parts"]}
        rows.extend(json.loads(line) for line in gzip.decompress(data).decode().splitlines())
    got = {r["id"]: (r["year"], r["lang"]) for r in rows}
    want = {i: (int(year), lang) for (year, lang), ids in layout.items() for i in ids} | {6: (None, None)}
    assert got == want and all(r["_error"] is None for r in rows)


def test_arrow_parts_and_hive_partitioned_parquet_on_s3(s3, bucket, job, tmp_path):
    """The other formats on S3 too: Arrow IPC parts, and --partition-by directories, read back from S3."""
    import s3fs

    source = hive_parquet(tmp_path / "hive")
    fs = s3fs.S3FileSystem()
    arrow = job(source, f"s3://{bucket}/arrow", "--output-format", "arrow")
    assert arrow.exit_code == 0, arrow.output
    parts = fs.glob(f"{bucket}/arrow/part-*.arrow")
    rows = ds.dataset(parts, format="arrow", filesystem=fs).to_table()
    assert sorted(rows.column("id").to_pylist()) == list(range(8))
    by = job(source, f"s3://{bucket}/by", "--partition-by", "date", "--partition-by", "lang")
    assert by.exit_code == 0, by.output
    table = ds.dataset(f"{bucket}/by", format="parquet", filesystem=fs, partitioning="hive").to_table()
    assert {r["id"]: (r["date"], r["lang"]) for r in table.to_pylist()} == expected_partitions()
    assert fs.exists(f"{bucket}/by/_SUCCESS")


def test_an_earlier_output_fed_back_in_is_refused_before_inference(job, tmp_path):
    """Its task and _error columns would be written twice; the message says which and what to do."""
    first = job(hive_parquet(tmp_path / "hive"), tmp_path / "first")
    assert first.exit_code == 0, first.output
    again = job(tmp_path / "first", tmp_path / "again")
    assert again.exit_code == 2, again.output
    assert "the input already has columns 'sentiment', '_error', which this run writes itself" in again.output
    assert "drop or rename the input's _error column" in again.output and "another name" in again.output
    assert not (tmp_path / "again" / "_progress").exists()  # Parquet: refused at plan time


def test_hive_types_match_pyarrow_discovery(tmp_path):
    """Typed as HivePartitioning.discover(infer_dictionary=False) types them, on the same rows."""
    paths = {
        "day=2026-11-24/n=3/big=1/v=a%20b": [0, 1],
        "day=2026-11-25/n=08/big=2147483648/v=__HIVE_DEFAULT_PARTITION__": [2],
        "day=2026-11-26/n=-7/big=5/v=x": [3],
    }
    for folder, ids in paths.items():
        (tmp_path / folder).mkdir(parents=True)
        pq.write_table(pa.table({"text": [f"t{i}" for i in ids], "i": ids}), tmp_path / folder / "f.parquet")
    location = Location(str(tmp_path), {})
    plan = plan_units(location, list_input(location), "parquet", 10, ReadOptions(), workers=1)
    options = ReadOptions(partitioning=plan.partitioning)
    ours = pa.concat_tables(read_unit(location, unit, options, plan.schema).table for unit in plan.units)
    partitioning = ds.HivePartitioning.discover(infer_dictionary=False)
    theirs = ds.dataset(tmp_path, format="parquet", partitioning=partitioning).to_table()
    assert ours.schema.remove_metadata() == theirs.schema.remove_metadata()
    assert ours.sort_by("i").to_pylist() == theirs.sort_by("i").to_pylist()
    assert dict(zip(ours.schema.names, map(str, ours.schema.types), strict=True)) == {
        "text": "string",
        "i": "int64",
        "day": "string",
        "n": "int32",
        "big": "string",
        "v": "string",
    }


def test_a_partition_key_that_is_also_a_column_is_refused(tmp_path):
    (tmp_path / "lang=en").mkdir()
    pq.write_table(pa.table({"text": ["a"], "lang": ["de"]}), tmp_path / "lang=en" / "f.parquet")
    location = Location(str(tmp_path), {})
    with pytest.raises(
        InputError, match=re.escape("has a column 'lang', and the input's paths have lang=... directories")
    ):
        plan_units(location, list_input(location), "parquet", 10, ReadOptions(), workers=1)


def test_single_file_and_files_directly_under_the_root_get_no_partition_columns(tmp_path):
    folder = tmp_path / "k=1"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["a"]}), folder / "f.parquet")
    location = Location(str(folder / "f.parquet"), {})
    plan = plan_units(location, list_input(location), "parquet", 10, ReadOptions(), workers=1)
    assert plan.partitioning is None and plan.schema.names == ["text"]


def test_writers_are_deterministic_and_jsonl_follows_its_rules():
    table = pa.table(
        {
            "s": ["a", None],
            "f": [float("nan"), 1.5],
            "inf": [float("inf"), -2.0],
            "st": [{"label": "POS", "score": 0.5}, None],
            "l": [[1, 2], []],
            "nested": [{"x": [float("-inf")]}, {"x": [1.0]}],
            "d": [datetime.date(2026, 11, 24), None],
            "ts": pa.array(
                [datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone.utc), None], pa.timestamp("us", "UTC")
            ),
            "b": [b"\x00\x01", None],
        }
    )
    lines = write_jsonl(table).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "s": "a",
            "f": None,
            "inf": None,
            "st": {"label": "POS", "score": 0.5},
            "l": [1, 2],
            "nested": {"x": [None]},
            "d": "2026-11-24",
            "ts": "2026-01-01T12:00:00+00:00",
            "b": "AAE=",
        },
        {
            "s": None,
            "f": 1.5,
            "inf": -2.0,
            "st": None,
            "l": [],
            "nested": {"x": [1.0]},
            "d": None,
            "ts": None,
            "b": None,
        },
    ]
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    for fmt, compression in (*FORMATS, ("parquet", "zstd"), ("parquet", "none"), ("jsonl", "none")):
        writer = OutputFormat(fmt, compression)
        assert writer.write(table, {"v": 1}) == writer.write(table, {"v": 1}), (fmt, compression)
    gz = OutputFormat("jsonl", "gzip").write(table, {})
    assert gzip.decompress(gz) == write_jsonl(table) and gz[4:8] == b"\0\0\0\0"
    arrow = pa.ipc.open_file(OutputFormat("arrow", "none").write(table, {"v": 1})).read_all()
    assert json.loads(arrow.schema.metadata[b"batchnlp"]) == {"v": 1}


@pytest.mark.parametrize(
    ("fmt", "compression", "expected"),
    [
        ("parquet", None, "zstd"),
        ("jsonl", None, "none"),
        ("arrow", None, "none"),
        ("jsonl", "gzip", "gzip"),
        ("parquet", "none", "none"),
    ],
)
def test_compression_defaults_per_format(fmt, compression, expected):
    spec = JobSpec.from_settings({"input": "i", "output": "o", "output_format": fmt, "compression": compression})
    assert spec.compression == expected and spec.output_options.compression == expected


@pytest.mark.parametrize(
    ("fmt", "compression"), [("parquet", "gzip"), ("arrow", "zstd"), ("jsonl", "snappy"), ("jsonl", "zstd")]
)
def test_a_compression_the_format_does_not_take_is_refused(fmt, compression):
    with pytest.raises(SpecError, match=f"compression '{compression}' does not apply to output format {fmt}"):
        JobSpec.from_settings({"input": "i", "output": "o", "output_format": fmt, "compression": compression})


def test_cli_refuses_a_bad_combination_before_any_work(tmp_path):
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "in.jsonl"), str(tmp_path / "o"), "--output-format", "arrow", "--compression", "zstd"],
    )
    assert result.exit_code == 2 and "does not apply to output format arrow" in result.output, result.output
    assert not os.path.exists(tmp_path / "o")
