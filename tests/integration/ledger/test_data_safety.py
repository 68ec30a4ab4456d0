"""Issue 27, part 1: batchnlp never deletes a file it did not write.

Each case was data loss (or a run in the wrong place) before: OUTPUT = INPUT deleted the input,
another tool's part files in OUTPUT went silently, ``--run-id ..`` staged a Delta run at the
table's root, ``models pull --overwrite`` deleted at any prefix. The jobs are real
``batchnlp run`` commands (tiny model, a real LocalCluster); S3 is moto's server over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.errors import OutputError, SpecError
from batchnlp.execution.shards.plan import Shard, shard_lock
from batchnlp.io.storage import Location, write_atomic
from batchnlp.ledger.commit import Committer
from batchnlp.spec import JobSpec
from tests.support.helpers import job_record, upload_dir, write_jsonl

ROWS = [{"text": "a fine day"}, {"text": "a bad day"}]
SPARK = ["part-00000-abc.snappy.parquet", "year=2025/part-00001-abc.snappy.parquet"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, relative name → bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def parquet_folder(folder: Path, names: list[str]) -> dict[str, bytes]:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [f"row of {name}"]}), folder / name)
    return files(folder)


def command(*args: object) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# --- OUTPUT = INPUT, and every other overlap ----------------------------------------------------


@pytest.mark.parametrize(
    "output",
    ["{lake}", "{lake}/", "./{rel}/../{rel}", "file://{lake}", "{link}", "{lake}/labels"],
    ids=["same", "trailing-slash", "relative-dotdot", "file-url", "symlink", "nested"],
)
def test_output_at_the_input_is_refused_and_the_input_kept(job, tmp_path, monkeypatch, output):
    lake = tmp_path / "lake"
    before = parquet_folder(lake, ["part-00000.parquet", "part-00001.parquet"])
    (tmp_path / "link").symlink_to(lake)
    monkeypatch.chdir(tmp_path)
    result = job(lake, output.format(lake=lake, rel="lake", link=tmp_path / "link"))
    assert result.exit_code == 2, result.output
    assert "overlap" in result.output
    assert files(lake) == before, "the input is intact, and nothing was written beside it"


def test_input_inside_output_is_refused(job, tmp_path):
    source = write_jsonl(tmp_path / "out" / "in" / "rows.jsonl", ROWS)
    result = job(source, tmp_path / "out")
    assert result.exit_code == 2 and "overlap" in result.output, result.output
    assert files(tmp_path / "out") == {"in/rows.jsonl": source.read_bytes()}


@pytest.mark.parametrize(
    "flags",
    [["--shard", "0/2", "--run-id", "r1"], ["--incremental", "--run-id", "r1"]],
    ids=["shard", "incremental"],
)
def test_overlap_is_refused_for_shards_and_incremental_runs(job, tmp_path, flags):
    lake = tmp_path / "lake"
    before = parquet_folder(lake, ["part-00000.parquet"])
    result = job(lake, lake, *flags)
    assert result.exit_code == 2 and "overlap" in result.output, result.output
    assert files(lake) == before


def test_commit_refuses_a_stored_plan_whose_input_is_its_output(job, tmp_path):
    """``commit`` has OUTPUT only: it checks the input the shards' stored plan names."""
    source, out = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out"
    assert job(source, out, "--shard", "0/1", "--run-id", "r1").exit_code == 0
    plan = out / "_progress" / "_plan.json"
    record = json.loads(plan.read_text())
    record["job"]["settings"]["input"] = str(out)  # as a plan stored before overlaps were refused
    plan.write_text(json.dumps(record))
    result = command("commit", out, "--run-id", "r1")
    assert result.exit_code == 2 and "overlap" in result.output, result.output
    assert not (out / "_SUCCESS").exists()


def test_commit_refuses_to_seal_another_tools_file_beside_the_shards_parts(job, tmp_path):
    source, out = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out"
    assert job(source, out, "--shard", "0/1", "--run-id", "r1").exit_code == 0
    parquet_folder(out, SPARK[:1])
    result = command("commit", out, "--run-id", "r1")
    assert result.exit_code == 2 and f"1 file that batchnlp did not write: {SPARK[0]}" in result.output, result.output
    assert not (out / "_SUCCESS").exists()


def test_a_backfill_refuses_a_spec_whose_input_is_its_output(tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(f"input: {tmp_path}/lake/dt=${{run_date}}/\noutput: {tmp_path}/lake/\ntasks: [sentiment]\n")
    args = ["submit", "--spec", spec, "--queue", "q", "--job-definition", "d", "--from", "2026-11-01"]
    result = command(*args, "--to", "2026-11-02", "--dry-run")
    assert result.exit_code == 2 and "overlap" in result.output, result.output


@pytest.mark.parametrize(
    "source, target, overlaps",
    [
        ("{tmp}/lake", "{tmp}/lake2", False),
        ("{tmp}/lake/*.jsonl", "{tmp}/lake/labels", False),  # the pattern matches nothing inside OUTPUT
        ("{tmp}/lake/*.jsonl", "{tmp}/lake", True),
        ("{tmp}/lake/**/*.jsonl", "{tmp}/lake/labels", True),
        ("{tmp}/lake/*", "{tmp}/lake/labels", True),
        ("s3://b/lake/", "s3a://b/lake", True),
        ("s3://b/lake", "s3://b/lake/labels/", True),
        ("s3://b/lake/*.jsonl", "s3://b/lake/", True),
        ("s3://b/lake", "s3://b/lake2", False),
        ("s3://b/lake", "s3://c/lake", False),
        ("s3://b/lake", "{tmp}/b/lake", False),
    ],
)
def test_overlap_is_judged_by_place(tmp_path, source, target, overlaps):
    settings = {"input": source.format(tmp=tmp_path), "output": target.format(tmp=tmp_path)}
    if overlaps:
        with pytest.raises(SpecError, match="overlap"):
            JobSpec.from_settings(settings)
    else:
        JobSpec.from_settings(settings)


# --- another tool's files in OUTPUT -------------------------------------------------------------


@pytest.mark.parametrize("marker", [False, True], ids=["parts", "parts-and-spark-success"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_another_tools_files_are_never_deleted(job, tmp_path, overwrite, marker):
    source, spark = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "spark_out"
    parquet_folder(spark, SPARK)
    if marker:
        (spark / "_SUCCESS").write_bytes(b"")  # Spark's and Hadoop's marker: empty
    before = files(spark)
    result = job(source, spark, *(["--overwrite"] if overwrite else []))
    assert result.exit_code == 2, result.output
    assert f"{len(before)} files that batchnlp did not write" in result.output
    assert all(name in result.output for name in before)
    assert files(spark) == before, "nothing deleted, nothing written"


@pytest.mark.parametrize(
    "flags",
    [["--incremental", "--run-id", "r1"], ["--shard", "0/1", "--run-id", "r1"]],
    ids=["incremental", "shard"],
)
def test_shards_and_incremental_runs_refuse_another_tools_files(job, tmp_path, flags):
    """A shard never clears, and each --incremental run writes OUTPUT/run_id=ID/ of its own: either would
    still mix its files with another tool's, for readers of OUTPUT."""
    source, spark = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "spark_out"
    before = parquet_folder(spark, SPARK)
    result = job(source, spark, *flags)
    assert result.exit_code == 2 and "2 files that batchnlp did not write" in result.output, result.output
    assert files(spark) == before


def test_another_tools_files_on_s3_are_never_deleted(job, tmp_path, s3, bucket):
    spark = tmp_path / "spark"
    parquet_folder(spark, SPARK)
    for name in SPARK:
        s3.upload_file(str(spark / name), bucket, f"spark_out/{name}")
    source = upload_dir(s3, write_jsonl(tmp_path / "in" / "rows.jsonl", ROWS).parent, bucket, "in")
    result = job(source, f"s3://{bucket}/spark_out", "--overwrite")
    assert result.exit_code == 2 and "2 files that batchnlp did not write" in result.output, result.output
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="spark_out/")["Contents"])
    assert keys == sorted(f"spark_out/{name}" for name in SPARK)


def test_a_refusal_names_five_files_and_counts_them_all(tmp_path):
    from batchnlp.ledger.ownership import NAMED

    out = tmp_path / "out"
    parquet_folder(out, [f"part-{i:05d}-x.parquet" for i in range(7)])
    with pytest.raises(OutputError) as refused:
        Committer(Location(str(out), {})).prepare("overwrite", job_record("r1", units=7))
    assert "7 files that batchnlp did not write" in str(refused.value) and "and 2 more" in str(refused.value)
    assert str(refused.value).count("-x.parquet") == NAMED


def test_a_checksum_file_is_foreign_and_an_empty_folder_is_left_alone(tmp_path):
    """batchnlp writes no .crc (Hadoop does): refused, as anything else it did not write. An empty folder
    holds no data: neither refused nor deleted."""
    out = tmp_path / "out"
    (out / "empty").mkdir(parents=True)
    committer = Committer(Location(str(out), {}))
    committer.prepare("new", job_record("r1", units=1))
    assert (out / "empty").is_dir()
    (out / ".part-00000.parquet.crc").write_bytes(b"crc")
    with pytest.raises(OutputError, match=r"1 file that batchnlp did not write: \.part-00000\.parquet\.crc"):
        committer.prepare("overwrite", job_record("r2", units=1))


def test_overwrite_replaces_its_own_run_but_not_a_file_added_beside_it(job, tmp_path):
    source, out = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out"
    flags = ["--partition-by", "text", "--on-bad-lines", "quarantine"]
    assert job(source, out, *flags).exit_code == 0
    assert job(source, out, "--overwrite").exit_code == 0, "batchnlp's own earlier output is replaced"
    assert sorted(name for name in files(out) if not name.startswith("_")) == ["part-00000.parquet"]
    (out / "notes.txt").write_text("mine")
    ours = files(out)
    result = job(source, out, "--overwrite")
    assert result.exit_code == 2 and "notes.txt" in result.output, result.output
    assert files(out) == ours


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_a_crashed_attempts_unrecorded_parts_are_cleared_by_the_next_run(tmp_path, where, request):
    """The job record, written before any unit runs, names what its units write: parts that no progress
    record names yet (the driver died first) are still batchnlp's, and only they go."""
    from batchnlp.ledger.ownership import take_stock

    url = str(tmp_path / "out")
    if where == "s3":
        url = f"s3://{request.getfixturevalue('bucket')}/out"
    committer = Committer(Location(url, {}))
    spec = {"output_format": "jsonl", "compression": "gzip", "partition_by": ["lang"]}
    committer.prepare("new", job_record("crashed", units=2, spec=spec))
    leftovers = ["lang=en/part-00000.jsonl.gz", "lang=de/part-00001.jsonl.gz", "_rejected/part-00001.jsonl"]
    for name in [*leftovers, "_rejected/_reasons/part-00001.jsonl", "lang=en/part-00000.jsonl.gz.tmp-" + "0" * 32]:
        write_atomic(committer.fs, committer.path(name), b"x")
    assert take_stock(committer.output).foreign == []
    committer.prepare("new", job_record("next", units=1))
    committer.fs.invalidate_cache()
    assert take_stock(committer.output).own == ["_progress/_job.json"]


def test_locks_are_batchnlps_but_left_to_the_lock():
    from batchnlp.ledger.ownership import SHARD_LOCKS

    assert SHARD_LOCKS.fullmatch(shard_lock(Shard(3, 8)))


# --- destinations refused outright --------------------------------------------------------------


@pytest.mark.parametrize("output", ["/", "s3://some-bucket", "s3://some-bucket/", "~", "~/"])
def test_overwrite_of_a_root_or_home_is_refused(tmp_path, monkeypatch, output):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    output = output.replace("~", str(tmp_path / "home"))
    with pytest.raises(SpecError, match=r"root|home directory"):
        JobSpec.from_settings({"input": "s3://elsewhere/in/", "output": output, "overwrite": True})


def test_a_run_into_home_is_refused_on_the_command_line(job, tmp_path, monkeypatch):
    home = tmp_path / "home"
    before = parquet_folder(home, ["part-00000.parquet"])
    monkeypatch.setenv("HOME", str(home))
    result = job(write_jsonl(tmp_path / "in.jsonl", ROWS), home, "--overwrite")
    assert result.exit_code == 2 and "home directory" in result.output, result.output
    assert files(home) == before


# --- run ids and paths that lead out ------------------------------------------------------------


@pytest.mark.parametrize("run_id", [".", "..", "a/b", "a\\b", "a\x01b", "x" * 129])
def test_a_run_id_that_is_no_plain_folder_name_is_a_usage_error(run_id):
    with pytest.raises(SpecError, match="run_id must be"):
        JobSpec.from_settings({"input": "in/", "output": "out/", "run_id": run_id})


@pytest.mark.parametrize("subcommand", ["commit", "submit"])
def test_run_id_dotdot_is_refused_by_commit_and_submit(tmp_path, subcommand):
    args = {"commit": ["commit", tmp_path], "submit": ["submit", "--spec", "s.yaml", "--queue", "q"]}[subcommand]
    if subcommand == "submit":
        args += ["--job-definition", "d", "--dry-run"]
    result = command(*args, "--run-id", "..")
    assert result.exit_code == 2 and "not . or .." in result.output, result.output


def test_run_id_dotdot_never_writes_at_a_delta_tables_root(job, tmp_path):
    table = tmp_path / "table"
    before = parquet_folder(table, ["part-00000-spark.snappy.parquet"])
    result = job(write_jsonl(tmp_path / "in.jsonl", ROWS), table, "--output-format", "delta", "--run-id", "..")
    assert result.exit_code == 2 and "run_id must be" in result.output, result.output
    assert files(table) == before


def test_a_location_refuses_names_that_lead_out():
    location = Location("s3://bucket/table", {})
    assert location.child("batchnlp-runs/r1/_SUCCESS") == "bucket/table/batchnlp-runs/r1/_SUCCESS"
    for name in ("..", "batchnlp-runs/..", "../x", "/etc/passwd", "a/../../b", "a/./b"):
        with pytest.raises(OutputError, match="lead out"):
            location.child(name)
        with pytest.raises(OutputError, match="lead out"):
            location.under(name)


# --- models pull --overwrite --------------------------------------------------------------------


def test_models_pull_overwrite_refuses_a_prefix_without_a_model(tiny_model, tmp_path):
    dest = tmp_path / "shared"
    dest.mkdir()
    (dest / "vocab.txt").write_text("someone else's vocabulary")  # a name pull would delete as stale
    (dest / "notes.json").write_text("{}")
    before = files(dest)
    result = command("models", "pull", tiny_model, dest, "--overwrite")
    assert result.exit_code == 2 and "no config.json" in result.output, result.output
    assert files(dest) == before


def test_models_pull_overwrite_on_s3_refuses_a_prefix_without_a_model(tiny_model, s3, bucket):
    s3.put_object(Bucket=bucket, Key="shared/vocab.txt", Body=b"someone else's")
    result = command("models", "pull", tiny_model, f"s3://{bucket}/shared", "--overwrite")
    assert result.exit_code == 2 and "no config.json" in result.output, result.output
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["shared/vocab.txt"]


def test_models_pull_overwrite_still_replaces_a_model(tiny_model, tmp_path):
    dest = tmp_path / "models" / "sst2"
    dest.mkdir(parents=True)  # a local pull does not make its folder (as before)
    assert command("models", "pull", tiny_model, dest).exit_code == 0
    result = command("models", "pull", tiny_model, dest, "--overwrite")
    assert result.exit_code == 0, result.output


def test_models_pull_refuses_a_symlink_out_of_the_checkpoint(tiny_model, tmp_path):
    checkpoint, secret = tmp_path / "checkpoint", tmp_path / "secret.json"
    shutil.copytree(tiny_model, checkpoint)
    secret.write_text('{"aws_secret_access_key": "not for the bucket"}')
    os.symlink(secret, checkpoint / "special_tokens_map.json")
    dest = tmp_path / "dest"
    result = command("models", "pull", checkpoint, dest)
    assert result.exit_code == 2 and "symlinks that point outside" in result.output, result.output
    assert not (dest / "special_tokens_map.json").exists()
