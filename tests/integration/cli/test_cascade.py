"""``batchnlp run --cascade sentiment=STUDENT`` end to end on the tiny models (a 2-layer random student
built like tiny_model): the rows labelled by each model, and what the manifest, the report, the parts
and the summary say about them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify, best_two_gap
from batchnlp.testing import build_classifier
from tests.support import corpus
from tests.support.helpers import write_jsonl


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("students") / "student", seed=7)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    texts = corpus.texts(80, seed=4)
    records = [{"id": i, "text": text} for i, text in enumerate(texts)]
    records.insert(7, {"id": 999, "text": None})
    return write_jsonl(tmp_path_factory.mktemp("in") / "reviews.jsonl", records), texts


def alone(model: Path, texts: list[str]) -> np.ndarray:
    """Each text's probabilities from ``model`` alone, on the engine the workers run."""
    task = Classify(
        TaskSpec(name="s", kind="sentiment", model=str(model), keep_probs=True), model, Engine("cpu", "fp32"), None
    )
    return np.array(task.annotate(texts)[0].field("probs").to_pylist())


def test_a_cascade_labels_each_row_with_one_model_and_counts_them(job, tiny_model, student, source, tmp_path):
    from batchnlp.inference.models.stage import check_ref, content_checksums, weights_of

    path, texts = source
    own = {"student": alone(student, texts), "teacher": alone(tiny_model, texts)}
    gaps = best_two_gap(own["student"])
    margin = float(np.round(np.median(gaps), 4))
    near = gaps < margin
    out = tmp_path / "out"
    result = job(path, out, "--cascade", f"sentiment={student}", "--cascade-margin", margin, "--keep-probs",
                 "--id-column", "id", "--rows-per-partition", "30")  # fmt: skip
    assert result.exit_code == 0, result.output

    table = ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table()
    rows = [row for row in table.to_pylist() if row["id"] != 999]
    assert [row["sentiment"]["model"] for row in rows] == ["teacher" if n else "student" for n in near]
    expected = np.where(near[:, None], own["teacher"], own["student"])
    np.testing.assert_allclose([row["sentiment"]["probs"] for row in rows], expected, atol=1e-6)
    assert next(row for row in table.to_pylist() if row["id"] == 999)["sentiment"] is None

    # Each distinct text runs once (deduplication): the counts are of the inputs each model ran.
    by_text = dict(zip(texts, near, strict=True))
    counts = {"student": sum(not n for n in by_text.values()), "teacher": sum(by_text.values())}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"]["labelled_by"] == {"sentiment": counts}
    assert manifest["models"]["sentiment"]["student"] == {
        "ref": str(student),
        "version": check_ref(str(student), {}),
        "weights": weights_of(content_checksums(student)),
        "margin": margin,
    }
    assert manifest["spec"]["tasks"][0]["student"] == str(student)
    job_record = json.loads((out / "_progress" / "_job.json").read_text())
    assert job_record["model_versions"]["sentiment (student)"] == check_ref(str(student), {})
    report = json.loads((out / "_report.json").read_text())
    assert report["tasks"]["sentiment"]["labelled_by"] == counts
    assert f"sentiment: student {counts['student']}, teacher {counts['teacher']}" in result.output
    metadata = json.loads(pq.read_schema(next(out.glob("part-*.parquet"))).metadata[b"batchnlp"])
    assert metadata["students"] == {"sentiment": weights_of(content_checksums(student))}


def test_a_student_without_its_teachers_labels_stops_the_run_naming_both(job, topics_model, source, tmp_path):
    result = job(source[0], tmp_path / "out", "--cascade", f"sentiment={topics_model}")
    assert result.exit_code == 2, result.output
    assert "cannot hand rows from its student to its teacher" in result.output and str(topics_model) in result.output


def test_a_missing_student_is_refused_before_any_work(job, source, tmp_path):
    result = job(source[0], tmp_path / "out", "--cascade", f"sentiment={tmp_path / 'no-such-student'}")
    assert result.exit_code == 2 and "no-such-student" in result.output
    assert not (tmp_path / "out" / "_progress").exists()
