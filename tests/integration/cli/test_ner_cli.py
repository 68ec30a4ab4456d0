"""``batchnlp run --task ner`` end to end: entities and the redacted text as two columns, the same with and
without deduplication, in a Delta table, in the report and ``inspect``; a sequence classifier refused (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.tasks.columns import ENTITIES
from batchnlp.tasks.ner import redact
from tests.support import REPO
from tests.support.helpers import invoke, write_jsonl

pytestmark = pytest.mark.cluster  # runs jobs through a LocalCluster

REVIEWS = REPO / "examples" / "reviews.jsonl"


def run_ner(model, out, *flags, source=REVIEWS):
    result = invoke(
        source, out, "--task", "ner", "--model", f"ner={model}", "--workers", "1", "--rows-per-partition", "50",
        "--id-column", "review_id", "--redact", "--aggregation", "first", *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def outputs(ner_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    return {
        "dedup": run_ner(ner_model, root / "dedup"),
        "no-dedup": run_ner(ner_model, root / "no-dedup", "--no-dedup"),
    }


def test_entities_and_the_redacted_text_are_two_columns_after_the_text(outputs):
    table = ds.dataset(outputs["dedup"], format="parquet").to_table()
    assert table.schema.names[-3:] == ["ner", "ner_redacted", "_error"]
    assert table.schema.field("ner").type == ENTITIES and table.schema.field("ner_redacted").type == pa.string()
    records = [json.loads(line) for line in REVIEWS.read_text().splitlines() if line]
    assert table.column("review_id").to_pylist() == [r["review_id"] for r in records]
    found = 0
    for row in table.to_pylist():
        if row["ner"] is None:
            assert row["ner_redacted"] is None and row["_error"]
            continue
        text = row["text"]
        for entity in row["ner"]:
            assert 0 <= entity["start"] < entity["end"] <= len(text)
        assert row["ner_redacted"] == redact(text, row["ner"])
        found += len(row["ner"])
    assert found > 100


def test_deduplication_changes_no_entity(outputs):
    """The same entities, offsets, words and redacted texts; scores to batching's rounding (other batch mates)."""
    once, each = (ds.dataset(out, format="parquet").to_table() for out in outputs.values())
    assert once.schema == each.schema
    assert once.drop_columns(["ner"]).equals(each.drop_columns(["ner"]))
    for a, b in zip(once.column("ner").to_pylist(), each.column("ner").to_pylist(), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert [{**x, "score": 0} for x in a] == [{**x, "score": 0} for x in b]
            np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5)


def test_the_report_and_inspect_summarise_the_entities(outputs):
    report = json.loads((outputs["dedup"] / "_report.json").read_text())["tasks"]["ner"]
    assert report["entities"] > 100 and 0 < report["rows_with_entities"] <= report["annotated"]
    assert sum(report["entity_types"].values()) == report["entities"]
    types = report["entity_types"]
    assert report["top_entity_types"].startswith(f"{max(types, key=types.get)} {max(types.values()):,}")
    assert "Named entities" in (outputs["dedup"] / "_report.html").read_text()
    shown = CliRunner().invoke(main, ["inspect", str(outputs["dedup"]), "--rows", "3"])
    assert shown.exit_code == 0, shown.output
    assert "ner" in shown.output and "(0." in shown.output
    wide = CliRunner().invoke(main, ["inspect", str(outputs["dedup"]), "--rows", "3"], env={"COLUMNS": "200"})
    assert "ner_redacted" in wide.output, "the redacted column beside the entities"


def test_a_delta_table_holds_both_columns(ner_model, tmp_path):
    from deltalake import DeltaTable

    source = write_jsonl(tmp_path / "in.jsonl", [{"review_id": "a", "text": "Alice Smith flew to Paris."}])
    table = run_ner(ner_model, tmp_path / "table", "--output-format", "delta", source=source)
    schema = DeltaTable(str(table)).schema().to_arrow()
    names = [field.name for field in schema]
    assert names[-3:] == ["ner", "ner_redacted", "_error"]


def test_a_sequence_classifier_is_refused_with_exit_2(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "Alice went to Paris."}])
    result = invoke(source, tmp_path / "out", "--task", "ner", "--model", f"ner={tiny_model}", "--workers", "1")
    assert result.exit_code == 2, result.output
    assert f"model '{tiny_model}' is a sequence classifier (DistilBertForSequenceClassification" in result.output
    assert "task ner needs a token classifier" in result.output
    assert not (tmp_path / "out" / "_SUCCESS").exists()
