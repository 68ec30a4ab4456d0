"""`batchnlp plan`: its estimates against exact counts on test corpora, its arithmetic, and that it
writes nothing. Tokens are compared with the whole input tokenised by the model's real tokenizer
(the bert-base-uncased WordPiece vocabulary of the test models)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.execution.estimate import shard_counts
from batchnlp.execution.performance import measured
from batchnlp.execution.plan import plan
from batchnlp.inference.batching import token_budget_batches
from batchnlp.io.formats import read_unit
from batchnlp.ledger.record import Manifest
from batchnlp.ledger.report import build_report, render_html
from batchnlp.spec import JobSpec
from tests.support.corpus import texts
from tests.support.helpers import manifest, part_result, upload_dir, write_jsonl


def plan_cli(*args: Any) -> Any:
    """``batchnlp plan ARGS`` in this process; a traceback in its output fails the test."""
    result = CliRunner().invoke(main, ["plan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def plan_json(source: Path | str, out: Path | str, model: Path, *flags: Any) -> dict[str, Any]:
    result = plan_cli(
        source, out, "--model", f"sentiment={model}", "--workers", "1", "--device", "cpu", "--json", *flags
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def exact_tokens(model: Path, values: list[str | None]) -> list[int]:
    """Tokens of each text as the classifier truncates it (512), 0 for a null or blank text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    usable = [v for v in values if isinstance(v, str) and v.strip()]
    lengths = iter(len(ids) for ids in tokenizer(usable, truncation=True, max_length=512)["input_ids"])
    return [next(lengths) if isinstance(v, str) and v.strip() else 0 for v in values]


def within(figure: dict[str, int], exact: int) -> bool:
    return figure["low"] <= exact <= figure["high"]


def mixed_records(count: int) -> list[dict[str, Any]]:
    """Texts from a few tokens to past 512, with some null and blank ones."""
    records = [{"id": i, "text": text} for i, text in enumerate(texts(count, seed=3, max_sentences=40))]
    for i in range(0, count, 97):
        records[i]["text"] = None if i % 2 else "   "
    return records


@pytest.mark.slow
def test_jsonl_rows_tokens_and_padding_within_the_stated_error(tmp_path: Path, tiny_model: Path) -> None:
    records = mixed_records(3000)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    figures = plan_json(source, tmp_path / "out", tiny_model)

    rows = figures["rows"]
    assert not rows["exact"] and within(rows, 3000), rows
    assert rows["high"] - rows["low"] < 0.4 * 3000  # a bound that says something (lengths are Pareto-tailed)
    lengths = exact_tokens(tiny_model, [r["text"] for r in records])
    tokens = figures["tasks"]["sentiment"]["tokens"]
    assert within(tokens, sum(lengths)), (tokens, sum(lengths))
    assert tokens["high"] - tokens["low"] < 0.3 * sum(lengths)

    # Padding: the engine's batching over each planned unit's real lengths (CPU: pad multiple 1).
    spec = JobSpec.from_settings({"input": str(source), "output": str(tmp_path / "out"), "workers": 1, "device": "cpu"})
    job_plan = plan(spec)
    assert figures["units"] == len(job_plan.units)
    padded = real = 0
    for unit in job_plan.units:
        unit_texts = read_unit(job_plan.source, unit, spec.read_options).table.column("text").to_pylist()
        unit_lengths = [n for n in exact_tokens(tiny_model, unit_texts) if n]
        for batch in token_budget_batches(unit_lengths, 8192, 1):
            padded += max(unit_lengths[i] for i in batch) * len(batch)
        real += sum(unit_lengths)
    exact_share = 1 - real / padded
    assert figures["pad_multiple"] == 1
    assert 0 <= figures["padding_share"] < 0.5
    assert abs(figures["padding_share"] - exact_share) < 0.1, (figures["padding_share"], exact_share)


@pytest.mark.parametrize("order", ["sorted by length", "periodic"])
def test_rows_of_ordered_input_within_the_stated_error(tmp_path: Path, tiny_model: Path, order: str) -> None:
    """Neighbouring lines alike, as in sorted or generated input: sampling the line *after* a random byte
    drew lines ∝ the previous line's length and put 600 rows of a periodic file at 511 (492 to 530)."""
    lengths = sorted(i % 40 for i in range(600)) if order == "sorted by length" else [i % 40 for i in range(600)]
    records = [{"id": i, "text": f"row {i} " + "word " * n} for i, n in enumerate(lengths)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    figures = plan_json(source, tmp_path / "out", tiny_model)
    assert within(figures["rows"], 600), figures["rows"]
    exact = sum(exact_tokens(tiny_model, [r["text"] for r in records]))
    assert within(figures["tasks"]["sentiment"]["tokens"], exact), (figures["tasks"]["sentiment"]["tokens"], exact)


def test_lines_longer_than_the_read_window(tmp_path: Path, tiny_model: Path) -> None:
    """Every sampled offset inside a 200 kB line: the line is read back to its start and on to its end."""
    records = [{"id": i, "text": "long " * 40_000 if i % 2 else "short"} for i in range(20)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    figures = plan_json(source, tmp_path / "out", tiny_model)
    assert within(figures["rows"], 20), figures["rows"]


def test_compressed_jsonl(tmp_path: Path, tiny_model: Path) -> None:
    records = mixed_records(1500)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    figures = plan_json(tmp_path / "in", tmp_path / "out", tiny_model)
    assert within(figures["rows"], 1500)
    exact = sum(exact_tokens(tiny_model, [r["text"] for r in records]))
    assert within(figures["tokens"], exact), (figures["tokens"], exact)


def test_a_compressed_files_sample_stops_at_its_byte_budget(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    """The estimate samples a compressed file's head by lines *and* bytes: behind a line of gigabytes
    (a bomb) it would otherwise decompress the whole line once more, beside the workers."""
    from batchnlp.execution import estimate

    monkeypatch.setattr(estimate, "COMPRESSED_HEAD_BYTES", 1 << 20)
    records = [{"id": 0, "text": "first"}, {"id": 1, "text": "x" * (2 << 20)}]
    records += [{"id": i, "text": f"row {i}"} for i in range(2, 50)]
    (tmp_path / "in").mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    spec = JobSpec.from_settings({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    sample = estimate.sample_input(spec, plan(spec))
    drawn = [row for stratum in sample.strata for row in stratum.rows if row is not None]
    assert [row["text"] for row in drawn] == ["first"], "nothing past the first MiB is read"


def test_parquet_rows_are_exact(tmp_path: Path, tiny_model: Path) -> None:
    records = mixed_records(2000)
    table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=300)
    figures = plan_json(tmp_path / "in.parquet", tmp_path / "out", tiny_model)
    assert figures["rows"]["exact"]
    assert figures["rows"]["estimate"] == figures["rows"]["low"] == figures["rows"]["high"] == 2000
    exact = sum(exact_tokens(tiny_model, table.column("text").to_pylist()))
    assert within(figures["tokens"], exact), (figures["tokens"], exact)
    assert figures["input"]["format"] == "parquet" and figures["input"]["files"] == 1


def test_json_matches_text(tmp_path: Path, tiny_model: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(400))
    flags = ["--shards", "3", "--gpu-hour-price", "4"]
    figures = plan_json(source, tmp_path / "out", tiny_model, *flags)
    result = plan_cli(
        source, tmp_path / "out", "--model", f"sentiment={tiny_model}", "--workers", "1", "--device", "cpu", *flags
    )
    assert result.exit_code == 0, result.output
    text = result.output
    rows, tokens = figures["rows"], figures["tokens"]
    assert f"rows        {rows['estimate']:,} (95%: {rows['low']:,} – {rows['high']:,}" in text
    assert f"tokens      {tokens['estimate']:,} (95%: {tokens['low']:,} – {tokens['high']:,})" in text
    assert f"units       {figures['units']:,}," in text
    table = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [int(cells[0]) for cells in table] == [1, 2, 3]
    for cells, row in zip(table, figures["by_shards"], strict=True):
        assert cells[-2:] == [f"{row['machine_hours']:.4f}", f"{row['cost_usd']:,.2f}"]


def test_cost_and_machine_hours_by_shard(tmp_path: Path, tiny_model: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(1200))
    figures = plan_json(
        source, tmp_path / "out", tiny_model, "--tokens-per-second", 50, "--gpu-hour-price", 2.5, "--shards", 4
    )
    assert figures["tokens_per_second"] == 50 and figures["throughput_source"] == "--tokens-per-second"
    units, tokens, startup = figures["units"], figures["tokens"]["estimate"], figures["startup_seconds"]
    assert [row["shards"] for row in figures["by_shards"]] == [1, 2, 3, 4]
    for row in figures["by_shards"]:
        n = row["shards"]
        wall = startup + tokens * math.ceil(units / n) / units / 50
        assert row["wall_seconds"] == pytest.approx(wall, abs=0.1)
        assert row["machine_hours"] == pytest.approx(n * wall / 3600, abs=1e-4)
        assert row["cost_usd"] == pytest.approx(n * wall / 3600 * 2.5, abs=0.01)
        assert row["wall_seconds_low"] <= row["wall_seconds"] <= row["wall_seconds_high"]
    assert figures["wall_seconds"] == figures["by_shards"][0]["wall_seconds"]
    assert shard_counts(20) == [1, 2, 4, 8, 16, 20]
    assert shard_counts(5) == [1, 2, 3, 4, 5]


def test_default_throughput_follows_the_device(tmp_path: Path, tiny_model: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(200))
    cpu = plan_json(source, tmp_path / "out", tiny_model)
    cuda = plan_json(source, tmp_path / "out", tiny_model, "--device", "cuda")  # planned here without a GPU
    assert (cpu["device"], cpu["precision"], cpu["backend"], cpu["pad_multiple"]) == ("cpu", "fp32", "onnxruntime", 1)
    # this CPU's figure for that backend: batchnlp/execution/performance.json (see test_performance_figures.py)
    figure = measured("cpu", "fp32", backend="onnxruntime")
    assert cpu["tokens_per_second"] % figure.rate == 0 and cpu["startup_seconds"] == figure.first_row_s
    assert (cuda["device"], cuda["precision"], cuda["pad_multiple"]) == ("cuda", "bf16", 8)
    assert cuda["tokens_per_second"] == 1_781_000 and cuda["startup_seconds"] == 22.6
    assert cuda["padded_tokens"]["estimate"] >= cpu["padded_tokens"]["estimate"]  # rounded up to multiples of 8


def test_it_writes_nothing_at_a_local_output(tmp_path: Path, tiny_model: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(100))
    plan_json(source, tmp_path / "out", tiny_model)
    assert not (tmp_path / "out").exists()


def test_it_writes_nothing_at_an_s3_output(tmp_path: Path, tiny_model: Path, s3: Any, bucket: str) -> None:
    records = mixed_records(600)
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    source = upload_dir(s3, tmp_path / "in", bucket, "raw")
    figures = plan_json(source, f"s3://{bucket}/out/", tiny_model)
    assert within(figures["rows"], 600)
    assert within(figures["tokens"], sum(exact_tokens(tiny_model, [r["text"] for r in records])))
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["raw/a.jsonl"]


def test_a_missing_input_exits_2_naming_it(tmp_path: Path, tiny_model: Path) -> None:
    result = plan_cli(tmp_path / "nothing.jsonl", tmp_path / "out", "--model", f"sentiment={tiny_model}")
    assert result.exit_code == 2
    assert "error:" in result.output and "nothing.jsonl" in result.output
    bad = plan_cli(tmp_path / "nothing.jsonl", tmp_path / "out", "--max-length", "3")
    assert bad.exit_code == 2 and "max_length" in bad.output.replace("-", "_")


def test_qa_counts_windows_as_the_task_cuts_them(tmp_path: Path, qa_model: Path) -> None:
    from transformers import AutoTokenizer

    contexts = texts(400, seed=5, max_sentences=30)
    questions = [None if i % 50 == 0 else "What broke, and when?" if i % 2 else "Who liked it?" for i in range(400)]
    records = [{"text": c, "q": q} for c, q in zip(contexts, questions, strict=True)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    args = [source, tmp_path / "out", "--task", "qa", "--model", f"qa={qa_model}", "--question-column", "q"]
    result = plan_cli(*args, "--max-length", 64, "--doc-stride", 16, "--workers", 1, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    task = figures["tasks"]["qa"]
    assert (task["max_length"], task["doc_stride"]) == (64, 16)

    tokenizer = AutoTokenizer.from_pretrained(qa_model)
    kept = [(q, c) for q, c in zip(questions, contexts, strict=True) if q]
    encoded = tokenizer(
        [q for q, _ in kept], [c for _, c in kept], truncation="only_second", max_length=64, stride=16,
        return_overflowing_tokens=True,
    )  # fmt: skip
    windows = encoded["input_ids"]
    assert len(windows) > 1.5 * len(kept)  # long contexts are cut into several windows
    assert within(task["tokens"], sum(map(len, windows))), (task["tokens"], sum(map(len, windows)))


def test_a_missing_question_column_exits_2(tmp_path: Path, qa_model: Path) -> None:
    pq.write_table(pa.table({"text": ["a context"]}), tmp_path / "in.parquet")
    args = ["--task", "qa", "--model", f"qa={qa_model}", "--question-column", "question"]
    result = plan_cli(tmp_path / "in.parquet", tmp_path / "out", *args)
    assert result.exit_code == 2 and "'question'" in result.output


def test_the_manifest_keeps_the_estimate_and_the_report_shows_it() -> None:
    estimate = {
        "rows": {"estimate": 205, "low": 190, "high": 220},
        "tokens": {"estimate": 4_000, "low": 3_800, "high": 4_200},
        "padding_share": 0.05,
        "wall_seconds": 14.2,
        "tokens_per_second": 1200,
    }
    record = dataclasses.replace(manifest("r1", [part_result(0), part_result(1)]), estimate=estimate)
    assert Manifest.from_record(json.loads(json.dumps(record.to_record()))).estimate == estimate
    older = {key: value for key, value in record.to_record().items() if key != "estimate"}
    assert Manifest.from_record(older).estimate is None

    report = build_report(record, [part_result(0), part_result(1)])
    by_figure = {row["figure"]: row for row in report["estimate"]}
    assert by_figure["rows"] == {"figure": "rows", "estimate": 205, "low": 190, "high": 220, "actual": 200}
    assert by_figure["tokens"]["actual"] == 4000
    assert by_figure["padding share"]["actual"] == pytest.approx(0.2)
    assert by_figure["wall seconds at 1,200 tokens/s"] == {
        "figure": "wall seconds at 1,200 tokens/s",
        "estimate": 14.2,
        "actual": 1.0,
    }
    page = render_html(report)
    assert "Estimate and outcome" in page and "190 – 220" in page
    assert build_report(manifest("r2", [part_result(0)]), [part_result(0)])["estimate"] is None
    assert "Estimate and outcome" not in render_html(build_report(manifest("r2", [part_result(0)]), [part_result(0)]))


@pytest.mark.cluster
def test_a_run_records_its_estimate_beside_what_happened(tmp_path: Path, tiny_model: Path) -> None:
    records = mixed_records(400)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(source), str(out), "--model", f"sentiment={tiny_model}", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    estimate = json.loads((out / "_manifest.json").read_text())["estimate"]
    assert within(estimate["rows"], 400), estimate["rows"]
    shown = {row["figure"]: row for row in json.loads((out / "_report.json").read_text())["estimate"]}
    assert shown["rows"]["actual"] == 400 and shown["tokens"]["actual"] == sum(
        exact_tokens(tiny_model, [r["text"] for r in records])
    )
    assert "Estimate and outcome" in (out / "_report.html").read_text()


@pytest.mark.parametrize("task", ["sentiment", "qa"])
@pytest.mark.slow
def test_the_estimate_imports_no_model_code(tmp_path: Path, tiny_model: Path, qa_model: Path, task: str) -> None:
    """A run's driver estimates while its workers label: importing transformers' modeling code there
    (seconds of CPU) would take those seconds from the workers. Tokenizers are all it needs."""
    import subprocess
    import sys

    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "q": "Who?"} for t in texts(50, seed=1)])
    model = qa_model if task == "qa" else tiny_model
    args = ["plan", str(source), str(tmp_path / "out"), "--task", task, "--model", f"{task}={model}"]
    args += ["--question-column", "q"] if task == "qa" else []
    script = (
        "import sys\nfrom batchnlp.cli import main\n"
        f"try:\n    main({[*args, '--json']!r})\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print([m for m in ('transformers.modeling_utils', 'batchnlp.inference.distilbert') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert loaded == "[]", loaded


def test_an_encoder_is_planned_on_torch_and_its_chunks_counted(tmp_path: Path, embed_model: Path) -> None:
    """The onnxruntime backend exports classifiers and QA models only: an embed run's encoder runs on torch,
    so the plan quotes torch's figure; with --chunk-tokens it counts every window's tokens."""
    from transformers import AutoTokenizer

    contexts = texts(200, seed=7, max_sentences=20)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": c} for c in contexts])
    args = [source, tmp_path / "out", "--task", "embed", "--model", f"embed={embed_model}", "--workers", 1]
    result = plan_cli(*args, "--device", "cpu", "--chunk-tokens", 32, "--chunk-stride", 8, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["backend"] == "torch" and figures["tokens_per_second"] % measured("cpu", "fp32").rate == 0
    encoded = AutoTokenizer.from_pretrained(embed_model)(
        contexts, truncation=True, max_length=32, stride=8, return_overflowing_tokens=True
    )
    assert len(encoded["input_ids"]) > 1.5 * len(contexts)
    assert within(figures["tasks"]["embed"]["tokens"], sum(map(len, encoded["input_ids"])))
