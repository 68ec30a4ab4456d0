"""The run report: statistics gathered per unit, ``_report.json`` figures and the HTML page."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import pairwise

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.io.formats.base import WorkUnit
from batchnlp.ledger.record import Manifest, PartResult, Totals
from batchnlp.ledger.report import build_report, render_html
from batchnlp.ledger.stats import column_stats, merge
from batchnlp.tasks.columns import ANSWER, LABEL_SCORE
from tests.support import corpus
from tests.support.helpers import write_jsonl

SECTIONS = ["summary", "models", "throughput", "units", "labels", "scores", "qa", "rejected", "time"]
HOSTILE = "<script>alert('x')</script>"
START = 1_700_000_000.0


def test_column_stats_count_labels_scores_and_answers():
    labels = pa.array(
        [{"label": "pos", "score": 0.95}, None, {"label": "neg", "score": 0.55}, {"label": "pos", "score": 1.0}],
        LABEL_SCORE,
    )
    assert column_stats(labels) == {
        "annotated": 3,
        "scores": [0, 0, 0, 0, 0, 1, 0, 0, 0, 2],
        "labels": {"pos": 2, "neg": 1},
    }
    answers = pa.array(
        [{"answer": "John", "score": 0.4, "start": 0, "end": 4}, {"answer": "", "score": 0.05, "start": 0, "end": 0}],
        ANSWER,
    )
    assert column_stats(answers) == {"annotated": 2, "scores": [1, 0, 0, 0, 1, 0, 0, 0, 0, 0], "answered": 1}
    assert column_stats(pa.array([], ANSWER)) == {"annotated": 0, "scores": [0] * 10, "answered": 0}
    merged = merge([column_stats(labels), column_stats(labels), {}])
    assert merged == {"annotated": 6, "scores": [0, 0, 0, 0, 0, 2, 0, 0, 0, 4], "labels": {"pos": 4, "neg": 2}}


def fake_result(index: int, rows: int, seconds: float, finished_at: float | None, reason: str = "text is null"):
    unit = WorkUnit(index=index, path="file:///in.jsonl", format="jsonl", start=index * 100, stop=index * 100 + 100)
    return PartResult(
        unit=unit, part=f"file:///out/{unit.id}.parquet", rows_in=rows, rows_out=rows, rejected=1,
        reasons={reason: 1}, rejected_examples=[{"row": 0, "id": HOSTILE, "reason": reason}],
        tokens=rows * 10, padded_tokens=rows * 12, bytes=1000, sha256="0" * 64,
        seconds={"read": 0.1, "model:sentiment": seconds, "engine:sentiment": seconds - 0.2,
                 "model:qa": 0.5, "engine:qa": 0.3, "input_wait": 0.1, "write": 0.05},
        device="cpu", precision="fp32", worker="host:1", models_loaded_at=START, finished_at=finished_at,
        task_stats={
            "sentiment": {"annotated": rows - 1, "scores": [0] * 9 + [rows - 1], "labels": {"pos": rows - 1}},
            "qa": {"annotated": rows - 1, "scores": [rows - 1] + [0] * 9, "answered": rows // 2},
        },
    )  # fmt: skip


def fake_manifest(results: list[PartResult]) -> Manifest:
    return Manifest.from_record({
        "batchnlp_version": "0.test",
        "run_id": "run-1",
        "committed_at": "2023-11-14T22:13:30+00:00",
        "spec": {"input": "in.jsonl", "output": "out/", "storage_options": {"key": "***"}},
        "input": {"format": "jsonl", "files": [{"path": "in.jsonl", "size": 1, "etag": None}]},
        "models": {
            "sentiment": {"task": "sentiment", "ref": "m/sst2", "version": "abc1", "weights": {"w.bin": "f" * 64}},
            "qa": {"task": "qa", "ref": "m/squad", "version": "def456", "weights": None},
        },
        "device": ["cpu"],
        "precision": ["fp32"],
        "totals": sum(results, Totals()).to_record(),
        "wall_seconds": 10.0,
        "rows_per_second": 30.0,
        "startup": {"models_loaded_s": 2.0, "first_row_s": 3.0},
    })  # fmt: skip


def test_report_json_sums_units_and_survives_progress_records():
    # part-00000 was kept from an interrupted attempt (finished before this run started).
    results = [
        fake_result(0, 100, 1.0, START - 50),
        fake_result(1, 120, 4.0, START + 6),
        fake_result(2, 80, 1.0, START + 3),
    ]
    results = [PartResult.from_record(json.loads(json.dumps(r.to_record()))) for r in results]
    report = json.loads(json.dumps(build_report(fake_manifest(results), results, started_at=START)))

    assert report["status"] == "committed" and report["run_id"] == "run-1"
    assert report["models"]["sentiment"]["version"] == "abc1" and report["device"] == ["cpu"]
    assert report["spec"]["storage_options"] == {"key": "***"}
    assert report["totals"]["rows_out"] == 300 and "rejected_examples" not in report["totals"]
    # engine 6.3 s (0.3 s of it waiting for input) of 7.95 s of unit time; 10 tokens of every 12 real
    assert report["totals"]["shares"] == {"padding": 0.1667, "input_wait": 0.0476, "model": 0.7547}
    assert report["throughput"]["kept_rows"] == 100
    assert report["throughput"]["points"] == [
        {"seconds": 0.0, "rows": 100},
        {"seconds": 3.0, "rows": 180, "unit": "part-00002"},
        {"seconds": 6.0, "rows": 300, "unit": "part-00001"},
    ]
    assert [u["seconds"] for u in report["units"]] == [1.65, 4.65, 1.65]
    assert [u["kept"] for u in report["units"]] == [True, False, False]
    sentiment, qa = report["tasks"]["sentiment"], report["tasks"]["qa"]
    assert sentiment["labels"] == {"pos": 297} and sentiment["scores"]["counts"][-1] == 297
    assert sentiment["scores"]["edges"][0] == 0.0 and sentiment["scores"]["edges"][-1] == 1.0
    assert "labels" not in qa and qa["answered"] == 150 and qa["answer_rate"] == round(150 / 297, 4)
    assert report["rejected"]["by_reason"] == {"text is null": 3}
    assert report["rejected"]["examples"][0] == {
        "part": "part-00000",
        "row": 0,
        "id": HOSTILE,
        "reason": "text is null",
    }
    split = report["time_split"]["seconds"]
    assert split == {"read": 0.3, "tokenise + decode": 1.2, "model": 6.0, "waiting for input": 0.3, "write": 0.15}
    assert sum(split.values()) == pytest.approx(sum(r.busy_seconds for r in results))


def test_old_progress_records_without_statistics_still_report():
    record = fake_result(0, 10, 1.0, None).to_record()
    for key in ("task_stats", "finished_at"):
        del record[key]
    record["seconds"] = {"read": 0.1, "model:sentiment": 1.0, "write": 0.1}
    old = PartResult.from_record(record)
    report = build_report(fake_manifest([old]), [old])
    assert report["tasks"]["sentiment"]["annotated"] == 0 and report["units"][0]["kept"]
    assert report["time_split"]["seconds"]["model"] == 1.0
    assert "<section" in render_html(report)


def test_html_has_every_section_and_escapes_user_strings():
    results = [fake_result(0, 100, 1.0, START + 1, reason=f"bad {HOSTILE}"), fake_result(1, 50, 9.0, START + 9)]
    manifest = fake_manifest(results)
    manifest.models["sentiment"]["ref"] = HOSTILE
    report = build_report(manifest, results, started_at=START)
    report["tasks"]["sentiment"]["labels"] = {HOSTILE: 99}
    page = render_html(report)

    assert page.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    headings = ["Summary", "Models", "Throughput", "Units", "Labels", "Scores", "Question answering", "Rejected rows"]
    for heading in [*headings, "Time split"]:
        assert f"<h2>{heading}</h2>" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=|https?://|@import|url\(", page), "self-contained: nothing fetched"
    units = page.split('<section id="units">')[1].split("</section>")[0]
    assert units.count('fill="#f85149"') == 1, "the slow unit stands out"
    without_qa = {**report, "tasks": {"sentiment": report["tasks"]["sentiment"]}}
    assert '<section id="qa">' not in render_html(without_qa)


@pytest.mark.cluster
def test_cli_run_writes_a_report_that_agrees_with_the_output(tmp_path, tiny_model, topics_model, qa_model):
    texts = corpus.texts(200, seed=5, max_sentences=8)
    records = [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)]
    bad = [{"id": HOSTILE, "text": None}, {"id": "blank", "text": "  "}, {"id": "number", "text": 7}]
    for position, row in zip((3, 90, 150), bad, strict=True):
        records.insert(position, row)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "run", str(source), str(out), "--task", "sentiment", "--task", "classify", "--task", "qa",
        "--model", f"sentiment={tiny_model}", "--model", f"classify={topics_model}", "--model", f"qa={qa_model}",
        "--question", "What broke?", "--workers", "1", "--rows-per-partition", "50", "--id-column", "id",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output

    manifest = json.loads((out / "_manifest.json").read_text())
    report = json.loads((out / "_report.json").read_text())
    table = ds.dataset(out, format="parquet").to_table()
    assert manifest["report"]["json"]["path"] == "_report.json" and manifest["report"]["html"]["path"] == "_report.html"
    assert report["run_id"] == manifest["run_id"] and report["totals"]["rows_out"] == table.num_rows == 203
    assert report["models"] == manifest["models"] and report["precision"] == ["fp32"]
    assert report["rejected"]["by_reason"] == manifest["totals"]["rejected_by_reason"]
    assert sum(report["rejected"]["by_reason"].values()) == 3
    assert [u["unit"] for u in report["units"]] == [p["path"].removesuffix(".parquet") for p in manifest["parts"]]
    assert [u["rows"] for u in report["units"]] == [p["rows"] for p in manifest["parts"]]
    points = report["throughput"]["points"]
    assert points[-1]["rows"] == 203 and all(a["seconds"] <= b["seconds"] for a, b in pairwise(points))
    assert 0 < points[-1]["seconds"] <= manifest["wall_seconds"]
    for name in ("sentiment", "classify"):
        labels = Counter(row["label"] for row in table.column(name).to_pylist() if row)
        assert report["tasks"][name]["labels"] == dict(labels)
        assert report["tasks"][name]["annotated"] == sum(report["tasks"][name]["scores"]["counts"]) == 200
    answers = [row["answer"] for row in table.column("qa").to_pylist() if row]
    assert report["tasks"]["qa"]["annotated"] == 200 and report["tasks"]["qa"]["answered"] == sum(map(bool, answers))
    split = report["time_split"]["seconds"]
    assert all(value >= 0 for value in split.values()) and split["model"] > 0 and split["tokenise + decode"] > 0
    shares = manifest["totals"]["shares"]
    assert shares == report["totals"]["shares"] and 0 < shares["model"] < 1 and 0 <= shares["input_wait"] < 1
    assert shares["padding"] == round(1 - manifest["totals"]["tokens"] / manifest["totals"]["padded_tokens"], 4)

    page = (out / "_report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("_report")) == ["_report.html", "_report.json"]


@pytest.mark.parametrize(
    "seconds, red",
    [
        # The slowest unit was marked whether or not it was over the line.
        pytest.param([1.0, 1.0, 1.1, 1.2], [], id="none-over-the-line"),
        pytest.param([2.0, 2.0, 3.0], [], id="exactly-one-and-a-half-is-not-over"),
        pytest.param([2.0, 2.0, 3.01], ["part-00002"], id="just-over"),
        # An even count's median is the mean of the middle two, 1.5 (the upper one, 2.0, was taken): 2.4 is over.
        pytest.param([1.0, 1.0, 1.0, 2.0, 2.4, 3.5], ["part-00004", "part-00005"], id="even-count-median"),
    ],
)
def test_the_unit_chart_marks_red_only_units_over_one_and_a_half_times_the_median(seconds, red):
    from batchnlp.ledger.report import HIGHLIGHT, _units

    units = [
        {"unit": f"part-{i:05d}", "seconds": s, "rows": 1, "rejected": 0, "worker": "h:1"}
        for i, s in enumerate(seconds)
    ]
    html = _units({"units": units})
    marked = re.findall(rf'fill="{HIGHLIGHT}"><title>(\d+): ', html)
    assert [f"part-{m}" for m in marked] == red
