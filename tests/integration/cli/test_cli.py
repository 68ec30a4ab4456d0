"""End to end through the CLI on local disk: a real LocalCluster with worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.support import REPO, corpus
from tests.support.helpers import invoke, one_worker_cluster, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

BAD_ROWS = [
    ({"id": 10_000, "text": None}, "text is null"),
    ({"id": 10_001, "text": ""}, "text is empty or whitespace"),
    ({"id": 10_002, "text": " \t\n "}, "text is empty or whitespace"),
    ({"id": 10_003, "text": 42}, "'text' is a number, not a string"),
    ({"id": 10_004, "text": {"nested": "x"}}, "'text' is an object, not a string"),
    ({"id": 10_005}, "no 'text' field"),
]


def read_output(out: Path) -> pa.Table:
    return ds.dataset(out, format="parquet").to_table()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_model, topics_model):
    """One two-task run over a corpus with bad rows mixed in, shared by the checks below."""
    root = tmp_path_factory.mktemp("e2e")
    texts = corpus.texts(400, seed=11)
    records = [{"id": i, "text": t, "meta": {"source": "web", "stars": i % 5}} for i, t in enumerate(texts)]
    for position, (row, _) in zip(range(5, 400, 70), BAD_ROWS, strict=False):
        records.insert(position, row)
    source = write_jsonl(root / "in" / "reviews.jsonl", records)
    out = root / "out"
    result = invoke(
        source, out, "--task", "sentiment", "--task", "classify",
        "--model", f"sentiment={tiny_model}", "--model", f"classify={topics_model}", "--top-k", "2",
        "--workers", "2", "--rows-per-partition", "60", "--id-column", "id",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return records, out, result


def test_rows_out_equal_rows_in_in_order_with_columns_passed_through(labelled):
    records, out, result = labelled
    table = read_output(out)
    assert table.num_rows == len(records)
    assert table.column("id").to_pylist() == [r["id"] for r in records]
    assert table.column_names == ["id", "text", "meta", "sentiment", "classify", "_error"]
    assert table.schema.field("sentiment").type == pa.struct([("label", pa.string()), ("score", pa.float32())])
    assert table.schema.field("classify").type.names == ["label", "score", "top_k"]
    assert table.column("meta").to_pylist()[0] == {"source": "web", "stars": 0}
    assert f"wrote {len(records)} rows ({len(BAD_ROWS)} rejected)" in result.output


def test_bad_rows_keep_their_place_with_a_reason(labelled):
    _, out, _ = labelled
    rows = {row["id"]: row for row in read_output(out).to_pylist()}
    for bad, reason in BAD_ROWS:
        row = rows[bad["id"]]
        assert row["_error"] == reason and row["sentiment"] is None and row["classify"] is None
    examples = json.loads((out / "_manifest.json").read_text())["totals"]["rejected_examples"]
    assert [(e["id"], e["reason"]) for e in examples] == [(bad["id"], reason) for bad, reason in BAD_ROWS]
    good = [row for row in rows.values() if row["id"] < 10_000]
    assert all(row["_error"] is None and row["sentiment"]["label"] in ("NEGATIVE", "POSITIVE") for row in good)


def test_labels_match_the_pipeline(labelled, tiny_model):
    from transformers import pipeline

    _, out, _ = labelled
    rows = [row for row in read_output(out).to_pylist() if row["_error"] is None][:80]
    expected = pipeline("text-classification", model=str(tiny_model), device="cpu")(
        [row["text"] for row in rows], truncation=True, batch_size=1
    )
    assert [row["sentiment"]["label"] for row in rows] == [e["label"] for e in expected]
    np.testing.assert_allclose([row["sentiment"]["score"] for row in rows], [e["score"] for e in expected], atol=1e-4)


def test_manifest_lists_every_part_then_success(labelled, tiny_model):
    records, out, _ = labelled
    manifest = json.loads((out / "_manifest.json").read_text())
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["run_id"] == manifest["run_id"]
    parts = manifest["parts"]
    assert [p["path"] for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert len(parts) >= 4, "a 400-row file spreads over several units"
    assert sorted(p.name for p in out.glob("part-*")) == [p["path"] for p in parts]
    import hashlib

    for part in parts:
        data = (out / part["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"] and len(data) == part["bytes"]
        assert pq.read_metadata(out / part["path"]).num_rows == part["rows"]
    assert manifest["totals"]["rows_out"] == manifest["totals"]["rows_in"] == len(records)
    assert manifest["totals"]["rejected"] == len(BAD_ROWS)
    assert manifest["models"]["sentiment"]["weights"]["model.safetensors"]
    assert manifest["precision"] == ["fp32"] and manifest["device"] == ["cpu"]
    # auto on CPU fp32: batchnlp's ONNX export on ONNX Runtime, whose making is timed (0 once cached)
    assert manifest["models"]["sentiment"]["backends"] == ["onnxruntime"]
    assert manifest["startup"]["onnx_export_s"] >= 0
    report = (out / "_report.html").read_text()
    assert "sentiment: onnxruntime" in report and "ONNX export" in report


def test_two_worker_processes_each_load_the_models_once(labelled):
    _, out, _ = labelled
    parts = json.loads((out / "_manifest.json").read_text())["parts"]
    loads: dict[str, set[float]] = {}
    for part in parts:
        loads.setdefault(part["worker"], set()).add(part["models_loaded_at"])
    assert len(loads) == 2, "both worker processes ran units"
    assert all(len(times) == 1 for times in loads.values()), "each worker loaded its models once"


def test_output_loads_in_pandas_datasets_and_duckdb(labelled, tmp_path):
    import datasets
    import duckdb
    import pandas as pd

    records, out, _ = labelled
    frame = pd.read_parquet(out)
    assert len(frame) == len(records) and list(frame.columns)[-1] == "_error"
    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "part-*.parquet"), split="train", cache_dir=str(tmp_path)
    )
    assert loaded.num_rows == len(records) and "sentiment" in loaded.column_names
    count = duckdb.sql(f"select count(*), count(_error) from read_parquet('{out}/part-*.parquet')").fetchall()
    assert count == [(len(records), len(BAD_ROWS))]


def test_finished_output_is_refused_or_resumed(labelled, tiny_model):
    _, out, _ = labelled
    source = out.parent / "in" / "reviews.jsonl"
    refused = invoke(source, out, "--model", f"sentiment={tiny_model}")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    resumed = invoke(
        source, out, "--task", "sentiment", "--task", "classify", "--model", f"sentiment={tiny_model}",
        "--model", f"classify={tiny_model}", "--top-k", "2", "--rows-per-partition", "60", "--resume",
    )  # fmt: skip
    assert resumed.exit_code == 0 and "already complete" in resumed.output


@pytest.mark.parametrize(
    "make_args, fragment",
    [
        (lambda d, m: [d / "missing.jsonl", d / "o", "--model", f"sentiment={m}"], "missing.jsonl does not exist"),
        (lambda d, m: [d / "in.jsonl", d / "o", "--model", f"sentiment={d}/nope"], "model directory"),
        (lambda d, m: [d / "in.jsonl", d / "o"], "--model TASK=PATH_OR_S3"),
        (lambda d, m: [d / "in.jsonl", d / "o", "--model", f"sentiment={m}", "--text-column", "body"], "fields found"),
        (lambda d, m: [d / "in.jsonl", d / "o", "--task", "summarise"], "unknown task 'summarise'"),
        (lambda d, m: [d / "in.jsonl", d / "o", "--model", "sentiment"], "is not TASK=VALUE"),
    ],
    ids=["missing-input", "missing-model", "hub-unreachable", "missing-text-column", "unknown-task", "bad-flag"],
)
def test_user_errors_stop_before_any_work_with_a_message(tmp_path, tiny_model, make_args, fragment):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}])
    result = invoke(*make_args(tmp_path, tiny_model))
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert not (tmp_path / "o" / "_SUCCESS").exists()


def test_missing_parquet_text_column_names_the_columns(tmp_path, tiny_model):
    pq.write_table(pa.table({"body": ["a"], "id": [1]}), tmp_path / "in.parquet")
    result = invoke(tmp_path / "in.parquet", tmp_path / "o", "--model", f"sentiment={tiny_model}")
    assert result.exit_code == 2 and "has no column 'text'; columns found: body, id" in result.output


def test_malformed_line_deep_in_a_file_stops_the_job_naming_the_line(tmp_path, tiny_model):
    lines = [json.dumps({"text": f"row {i} is fine"}) for i in range(500)]
    lines[420] = '{"text": "broken'
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke(
        tmp_path / "in.jsonl", tmp_path / "o", "--model", f"sentiment={tiny_model}",
        "--rows-per-partition", "100", "--workers", "1",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "in.jsonl:421:" in result.output and "malformed JSON" in result.output
    assert not (tmp_path / "o" / "_SUCCESS").exists()


def test_spec_file_with_flag_override(tmp_path, tiny_model):
    write_jsonl(tmp_path / "in.jsonl", [{"body": f"text {i}", "n": i} for i in range(30)])
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"input: {tmp_path / 'in.jsonl'}\noutput: {tmp_path / 'wrong'}\ntext_column: body\n"
        f"models:\n  sentiment: {tiny_model}\nworkers: 1\nrows_per_partition: 10\n"
    )
    result = invoke("--spec", spec, str(tmp_path / "in.jsonl"), tmp_path / "right", "--rows-per-partition", "15")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "right" / "_manifest.json").read_text())
    assert manifest["spec"]["rows_per_partition"] == 15 and manifest["spec"]["text_column"] == "body"
    assert not (tmp_path / "wrong").exists()


def test_resume_recomputes_only_units_without_an_intact_part(tmp_path, tiny_model):
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review number {i} " * (i % 7 + 1)} for i in range(2400)])
    args = [tmp_path / "in.jsonl", tmp_path / "o", "--model", f"sentiment={tiny_model}", "--workers", "1"]
    assert invoke(*args).exit_code == 0
    out = tmp_path / "o"
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert len(before) == 4, "automatic sizing: 4 units for one worker"
    # An interrupted run: no commit yet, one part lost, one torn.
    (out / "_SUCCESS").unlink()
    (out / "_manifest.json").unlink()
    (out / "part-00001.parquet").unlink()
    (out / "part-00002.parquet").write_bytes(b"torn")
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "2 parts kept from the interrupted run" in resumed.output
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before, "same bytes, deterministic"
    assert read_output(out).column("id").to_pylist() == list(range(2400))


def test_a_write_mode_flag_replaces_the_spec_s_mode(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(f"input: {tmp_path / 'missing.jsonl'}\noutput: {tmp_path / 'o'}\nresume: true\n")
    result = invoke("--spec", spec, "--overwrite")
    assert result.exit_code == 2 and "missing.jsonl does not exist" in result.output


def test_jsonl_fields_whose_types_drift_between_units_share_one_schema(tmp_path, tiny_model):
    records = [{"text": f"row {i}", "score": None, "meta": {"a": i}} for i in range(40)]
    records += [{"text": f"row {i}", "score": i, "meta": {"b": "x"}} for i in range(40, 80)]
    records += [{"text": f"row {i}", "score": i / 2, "late": True} for i in range(80, 120)]
    write_jsonl(tmp_path / "in.jsonl", records)
    result = invoke(
        tmp_path / "in.jsonl", tmp_path / "o", "--model", f"sentiment={tiny_model}",
        "--rows-per-partition", "40", "--workers", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    schemas = {pq.read_schema(part).remove_metadata() for part in (tmp_path / "o").glob("part-*.parquet")}
    assert len(schemas) == 1 and len(list((tmp_path / "o").glob("part-*.parquet"))) >= 3
    table = read_output(tmp_path / "o")
    assert table.schema.field("score").type == pa.float64()
    assert table.column_names[:4] == ["text", "score", "meta", "late"]
    assert table.column("score").to_pylist() == [None] * 40 + [float(i) for i in range(40, 80)] + [
        i / 2 for i in range(80, 120)
    ]
    import duckdb
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "o")) == 120
    assert duckdb.sql(f"select count(late) from read_parquet('{tmp_path}/o/part-*.parquet')").fetchall() == [(40,)]


def test_existing_scheduler_is_used_and_left_running(tmp_path, tiny_model):
    from distributed import Client

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"text number {i}"} for i in range(40)])
    with one_worker_cluster() as cluster:
        result = invoke(
            tmp_path / "in.jsonl", tmp_path / "o", "--model", f"sentiment={tiny_model}",
            "--scheduler", cluster.scheduler_address,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        with Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 1, "the job did not shut the cluster down"
    assert read_output(tmp_path / "o").num_rows == 40


def test_real_subprocess_run_and_help(tmp_path, tiny_model):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "a fine day"}, {"text": None}])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    help_text = subprocess.run(
        [sys.executable, "-m", "batchnlp", "run", "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    for option in ("--task", "--model", "--top-k", "--scheduler", "--storage-option", "--resume", "Examples:"):
        assert option in help_text
    done = subprocess.run(
        [sys.executable, "-m", "batchnlp", "run", str(tmp_path / "in.jsonl"), str(tmp_path / "o"),
         "--model", f"sentiment={tiny_model}", "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 2 rows (1 rejected)" in done.stdout


def test_qa_answers_a_question_column_and_named_questions_from_a_spec(tmp_path, qa_model):
    contexts = corpus.texts(30, seed=21)
    records = [{"id": i, "text": c, "question": "Who is the buyer?"} for i, c in enumerate(contexts)]
    records += [
        {"id": 30, "text": "The buyer is John.", "question": None},
        {"id": 31, "text": None, "question": "Who?"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    result = invoke(source, tmp_path / "col", "--task", "qa", "--question-column", "question",
                    "--model", f"qa={qa_model}", "--workers", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "col")
    answers = table.column("qa").to_pylist()
    assert table.column_names == ["id", "text", "question", "qa", "_error"]
    assert all(c[a["start"] : a["end"]] == a["answer"] for a, c in zip(answers[:30], contexts, strict=True))
    assert answers[30:] == [None, None]
    assert table.column("_error").to_pylist()[29:] == [None, "question is null", "text is null"]

    spec = tmp_path / "fields.yaml"
    spec.write_text(
        f"input: {source}\noutput: {tmp_path / 'named'}\nworkers: 1\n"
        f"tasks:\n  - {{name: party, task: qa, question: 'Who is the buyer?', model: {qa_model}}}\n"
        f"  - {{name: price, task: qa, question: 'What is the price?', model: {qa_model}}}\n"
    )
    assert invoke("--spec", spec).exit_code == 0
    named = read_output(tmp_path / "named")
    assert named.column("party").to_pylist()[:30] == answers[:30], "same question, same answers"
    assert named.column("price").null_count == 1 and named.column("_error").to_pylist()[30:] == [None, "text is null"]
    bad = invoke(source, tmp_path / "o", "--task", "qa", "--model", f"qa={qa_model}", "--question-column", "q")
    assert bad.exit_code == 2 and "column 'q', which the input does not have" in bad.output


def test_a_run_id_names_the_run_and_a_committed_one_is_not_redone(tmp_path, tiny_model):
    write_jsonl(tmp_path / "in.jsonl", [{"text": f"review {i}"} for i in range(30)])
    args = [tmp_path / "in.jsonl", tmp_path / "o", "--model", f"sentiment={tiny_model}", "--workers", "1"]
    first = invoke(*args, "--run-id", "nightly-2026-11-24")
    assert first.exit_code == 0, first.output
    manifest = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert manifest["run_id"] == "nightly-2026-11-24" and "run nightly-2026-11-24" in first.output
    committed = (tmp_path / "o" / "_SUCCESS").stat().st_mtime_ns
    again = invoke(*args, "--run-id", "nightly-2026-11-24")  # a retried scheduled submission
    assert again.exit_code == 0 and "already complete (run nightly-2026-11-24" in again.output
    assert (tmp_path / "o" / "_SUCCESS").stat().st_mtime_ns == committed, "nothing rewritten"
    other = invoke(*args, "--run-id", "nightly-2026-11-25")
    assert other.exit_code == 2 and "already holds a finished run" in other.output
    bad = invoke(*args, "--run-id", "no spaces allowed")
    assert bad.exit_code == 2 and "run_id must be 1-128 of letters, digits" in bad.output
