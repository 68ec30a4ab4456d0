"""End to end against moto's S3 server: input, output and models all in buckets, over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs
from click.testing import CliRunner

from batchnlp.cli import main
from tests.support import REPO, corpus
from tests.support.helpers import upload_dir

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

FAKE_KEY_ID = "AKIAQWERTYUIOP123456"
FAKE_SECRET = "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm12"


def put_parquet(s3, bucket: str, key: str, rows: int) -> pa.Table:
    table = pa.table({"review_id": [f"r{i:04d}" for i in range(rows)], "text": corpus.texts(rows, seed=5)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=25)
    s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
    return table


def keys(s3, bucket: str, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix) for item in listing)


def run_cli(*args: str):
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def models(s3, bucket, tiny_model, topics_model):
    return upload_dir(s3, tiny_model, bucket, "models/sst2"), upload_dir(s3, topics_model, bucket, "models/topics")


def test_s3_job_with_s3_models_and_several_tasks_reads_the_input_once(s3, bucket, models, s3_proxy):
    sst2, topics = models
    table = put_parquet(s3, bucket, "lake/reviews/date=2026-11-24/part-0.parquet", 100)
    common = ["--model", f"sentiment={sst2}", "--rows-per-partition", "50", "--workers", "1"]

    s3_proxy.clear()
    one = run_cli(f"s3://{bucket}/lake/reviews/", f"s3://{bucket}/labelled/one", *common)
    assert one.exit_code == 0, one.output
    reads_one_task = s3_proxy.count("GET", "/lake/reviews/")

    s3_proxy.clear()
    two = run_cli(
        f"s3://{bucket}/lake/reviews/", f"s3://{bucket}/labelled/two", *common,
        "--task", "sentiment", "--task", "classify", "--model", f"classify={topics}", "--top-k", "3",
    )  # fmt: skip
    assert two.exit_code == 0, two.output
    assert s3_proxy.count("GET", "/lake/reviews/") == reads_one_task, "two tasks, one read of the input"

    assert keys(s3, bucket, "labelled/two/") == [
        "_SUCCESS", "_manifest.json", "_progress/_job.json", "_progress/part-00000.json",
        "_progress/part-00001.json", "_report.html", "_report.json", "part-00000.parquet", "part-00001.parquet",
    ]  # fmt: skip
    fs = s3fs.S3FileSystem()
    out = ds.dataset(f"{bucket}/labelled/two/", filesystem=fs, format="parquet").to_table()
    assert out.column("review_id").to_pylist() == table.column("review_id").to_pylist()
    assert out.column_names == ["review_id", "text", "date", "sentiment", "classify", "_error"], "Hive key kept"
    assert set(out.column("date").to_pylist()) == {"2026-11-24"}
    manifest = json.loads(fs.cat_file(f"{bucket}/labelled/two/_manifest.json"))
    assert manifest["models"]["classify"]["ref"] == topics
    assert manifest["totals"]["rows_out"] == 100


def test_overwrite_replaces_a_finished_s3_output(s3, bucket, models):
    sst2, _ = models
    put_parquet(s3, bucket, "in/data.parquet", 60)
    args = [f"s3://{bucket}/in/data.parquet", f"s3://{bucket}/out/", "--model", f"sentiment={sst2}", "--workers", "1"]
    assert run_cli(*args, "--rows-per-partition", "20").exit_code == 0
    assert [k for k in keys(s3, bucket, "out/") if k.startswith("part-")] == [f"part-0000{i}.parquet" for i in range(3)]
    refused = run_cli(*args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    again = run_cli(*args, "--rows-per-partition", "100", "--overwrite")
    assert again.exit_code == 0, again.output
    assert [k for k in keys(s3, bucket, "out/") if k.startswith("part-")] == ["part-00000.parquet"]


def test_missing_output_bucket_is_named_and_not_created(s3, bucket, models):
    sst2, _ = models
    put_parquet(s3, bucket, "in/data.parquet", 5)
    result = run_cli(f"s3://{bucket}/in/", "s3://no-such-output-bucket/x/", "--model", f"sentiment={sst2}")
    assert result.exit_code == 2 and "output bucket 'no-such-output-bucket' does not exist" in result.output
    assert "no-such-output-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_credentials_never_appear_in_output_logs_or_manifest(s3, bucket, models, tmp_path):
    """A real subprocess run with recognisable fake secrets, verbose, then a search of everything."""
    sst2, _ = models
    put_parquet(s3, bucket, "in/data.parquet", 30)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "batchnlp", "run", f"s3://{bucket}/in/", f"s3://{bucket}/out/",
         "--model", f"sentiment={sst2}", "--workers", "1", "--verbose",
         "--storage-option", f"key={FAKE_KEY_ID}", "--storage-option", f"secret={FAKE_SECRET}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    written = b"".join(
        s3.get_object(Bucket=bucket, Key=f"out/{key}")["Body"].read() for key in keys(s3, bucket, "out/")
    )
    for secret in (FAKE_KEY_ID, FAKE_SECRET):
        assert secret not in done.stdout and secret not in done.stderr
        assert secret.encode() not in written
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    assert manifest["spec"]["storage_options"] == {"key": "***", "secret": "***"}
