"""``batchnlp run --task zero-shot`` end to end on the tiny NLI model: the same output with and without
deduplication, the report's zero-shot section, ``inspect --rows``, and a checkpoint that is no NLI
classifier refused with exit code 2 and its name."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from tests.support import corpus
from tests.support.helpers import invoke, one_worker_cluster, write_jsonl

pytestmark = pytest.mark.cluster  # runs jobs through a LocalCluster

LABELS = "sports,politics,technology"


@pytest.fixture(scope="module")
def cluster() -> str:
    with one_worker_cluster() as running:
        yield running.scheduler_address


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    texts = corpus.texts(60, seed=21)
    records = [{"id": i, "text": texts[i % 40]} for i in range(60)]  # 20 repeats: dedup has work to do
    records[3]["text"], records[9]["text"] = None, "  "
    return write_jsonl(tmp_path_factory.mktemp("zs") / "in.jsonl", records)


def run(source: Path, out: Path, model: Path, cluster: str, *flags: str):
    return invoke(
        source, out, "--task", "zero-shot", "--model", f"zero-shot={model}", "--labels", LABELS,
        "--scheduler", cluster, "--workers", "1", "--rows-per-partition", "25", "--id-column", "id", *flags,
    )  # fmt: skip


def test_dedup_on_and_off_give_the_same_output_and_the_report_has_a_section(zero_shot_model, source, cluster, tmp_path):
    deduped, plain = tmp_path / "dedup", tmp_path / "plain"
    for out, flags in ((deduped, ("--multi-label",)), (plain, ("--multi-label", "--no-dedup"))):
        result = run(source, out, zero_shot_model, cluster, *flags)
        assert result.exit_code == 0, result.output
    tables = [ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table() for out in (deduped, plain)]
    assert tables[0].equals(tables[1])
    values = tables[0].column("zero-shot").to_pylist()
    assert sum(v is None for v in values) == 2 and len(values) == 60
    assert all(len(v["labels"]) == 3 and v["label"] == v["labels"][0]["label"] for v in values if v is not None)

    manifest = json.loads((deduped / "_manifest.json").read_text())
    assert manifest["totals"]["dedup"]["zero-shot"]["distinct"] < 58, "repeated texts were labelled once"
    report = json.loads((deduped / "_report.json").read_text())["tasks"]["zero-shot"]
    assert report["annotated"] == 58 and sum(report["labels"].values()) == 58
    assert set(report["above_half"]) <= set(LABELS.split(","))
    page = (deduped / "_report.html").read_text()
    assert '<section id="zero-shot">' in page and "Zero-shot classification" in page

    shown = CliRunner().invoke(main, ["inspect", str(deduped), "--rows", "3"])
    assert shown.exit_code == 0, shown.output
    first = values[0]
    assert f"{first['label']} ({first['score']:.2f})" in shown.output


def test_a_checkpoint_that_is_no_nli_classifier_exits_2_naming_it(tiny_model, source, cluster, tmp_path):
    result = run(source, tmp_path / "out", tiny_model, cluster)
    assert result.exit_code == 2, result.output
    assert f"model {tiny_model} has no entailment label" in result.output and "NEGATIVE, POSITIVE" in result.output
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_zero_shot_without_labels_exits_2_before_any_work(zero_shot_model, source, tmp_path):
    result = invoke(source, tmp_path / "out", "--task", "zero-shot", "--model", f"zero-shot={zero_shot_model}")
    assert result.exit_code == 2 and "needs its candidate labels: --labels" in result.output, result.output


def test_plan_counts_every_rows_pairs(zero_shot_model, tmp_path):
    """``batchnlp plan``'s tokens for zero-shot with 3 labels: the sum of every (text, hypothesis) pair's length."""
    from transformers import AutoTokenizer

    texts = corpus.texts(120, seed=8, max_sentences=12)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": text} for text in texts])
    args = [source, tmp_path / "out", "--task", "zero-shot", "--model", f"zero-shot={zero_shot_model}"]
    result = CliRunner().invoke(main, ["plan", *map(str, args), "--labels", LABELS, "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["tasks"]["zero-shot"]["tokens"]

    tokenizer = AutoTokenizer.from_pretrained(zero_shot_model)
    hypotheses = [f"This example is {label}." for label in LABELS.split(",")]
    pairs = tokenizer([t for t in texts for _ in hypotheses], hypotheses * len(texts), truncation="only_first")
    exact = sum(map(len, pairs["input_ids"]))
    single = sum(map(len, tokenizer(texts, truncation=True)["input_ids"]))
    assert tokens["low"] <= exact <= tokens["high"], (tokens, exact)
    assert exact > 3 * single, "three pairs a row, each with its hypothesis"
