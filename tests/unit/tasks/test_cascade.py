"""A cascade (``--cascade TASK=STUDENT``): the student labels every row, and the rows whose best two
student scores are closer than the margin are labelled by the teacher instead; each model is
checked against transformers run on its own. int8 rescoring is the same hand-off (test_int8.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchnlp.errors import ModelError
from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify, best_two_gap, close_calls, hand_off
from batchnlp.tasks.columns import label_type
from batchnlp.testing import build_classifier
from tests.support import corpus

LABELS = ["NEGATIVE", "POSITIVE"]


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random student built like tiny_model, with its labels."""
    return build_classifier(tmp_path_factory.mktemp("students") / "student", seed=7)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus.texts(120, seed=5)


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Each text's label probabilities from transformers' own model and tokenizer, one text at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=False).eval()
    with torch.no_grad():
        rows = [model(**tokenizer(text, truncation=True, return_tensors="pt")).logits[0] for text in texts]
    return torch.softmax(torch.stack(rows), -1).numpy()


def cascade(teacher: Path, student: Path, margin: float, precision: str = "fp32", **engine: float) -> Classify:
    spec = TaskSpec(
        name="sentiment", kind="sentiment", model=str(teacher), student=str(student), cascade_margin=margin,
        keep_probs=True,
    )  # fmt: skip
    task = Classify(spec, teacher, Engine("cpu", precision, 4096, **engine), None)
    task.cascade_from(student)
    return task


def margin_between(gaps: np.ndarray) -> float:
    """A margin that splits ``gaps`` near their median, halfway between two of them: a few 1e-5 of
    difference between transformers and batchnlp's engine cannot move a row across it."""
    ordered = np.sort(gaps)
    middle = np.arange(len(ordered) // 3, 2 * len(ordered) // 3)
    widest = middle[np.argmax(ordered[middle + 1] - ordered[middle])]
    return float((ordered[widest] + ordered[widest + 1]) / 2)


def test_the_teacher_labels_exactly_the_rows_the_student_calls_closer_than_the_margin(tiny_model, student, texts):
    alone = {"student": reference(student, texts), "teacher": reference(tiny_model, texts)}
    gaps = best_two_gap(alone["student"])
    margin = margin_between(gaps)
    near = gaps < margin
    assert 10 < near.sum() < len(texts) - 10

    column, stats = cascade(tiny_model, student, margin).annotate(texts)

    got = column.to_pylist()
    expected = np.where(near[:, None], alone["teacher"], alone["student"])
    np.testing.assert_allclose([row["probs"] for row in got], expected, atol=1e-4)
    assert [row["label"] for row in got] == [LABELS[i] for i in expected.argmax(-1)]
    assert [row["model"] for row in got] == ["teacher" if n else "student" for n in near]
    assert stats.labelled_by == {"student": int((~near).sum()), "teacher": int(near.sum())}
    assert stats.tokens > 0 and stats.rescored == 0


def test_margin_0_leaves_every_row_to_the_student(tiny_model, student, texts):
    column, stats = cascade(tiny_model, student, 0.0).annotate(texts)
    np.testing.assert_allclose(column.field("probs").to_pylist(), reference(student, texts), atol=1e-4)
    assert set(column.field("model").to_pylist()) == {"student"}
    assert stats.labelled_by == {"student": len(texts), "teacher": 0}


def test_a_student_with_the_labels_in_another_order_is_read_in_the_teachers(tiny_model, tmp_path, texts):
    swapped = build_classifier(tmp_path / "swapped", ["POSITIVE", "NEGATIVE"], seed=7)
    column, _ = cascade(tiny_model, swapped, 0.0).annotate(texts[:30])
    own = reference(swapped, texts[:30])  # its own order: POSITIVE, NEGATIVE
    np.testing.assert_allclose(column.field("probs").to_pylist(), own[:, ::-1], atol=1e-4)
    assert column.field("label").to_pylist() == [["POSITIVE", "NEGATIVE"][i] for i in own.argmax(-1)]


def test_the_teacher_tokenises_the_rows_it_labels_with_its_own_tokenizer(tiny_model, tmp_path):
    texts = ["The Battery Lasts TWO Days", "Service Was SLOW", "Absolutely Terrible Support", "I LOVED it"] * 5
    cased = build_classifier(tmp_path / "cased", seed=7, cased=True)
    task = cascade(tiny_model, cased, 0.999)  # every row is a close call: the teacher labels them all
    assert task.student.preprocess_own(texts[:1]) != task.preprocess_own(texts[:1])
    column, stats = task.annotate(texts)
    assert stats.labelled_by == {"student": 0, "teacher": len(texts)}
    np.testing.assert_allclose(column.field("probs").to_pylist(), reference(tiny_model, texts), atol=1e-4)


def test_a_student_without_its_teachers_labels_is_refused_naming_both(tiny_model, topics_model):
    with pytest.raises(ModelError, match="cannot hand rows from its student to its teacher") as refused:
        cascade(tiny_model, topics_model, 0.2)
    message = str(refused.value)
    assert str(topics_model) in message and str(tiny_model) in message
    assert "world, sports, business, science, arts (softmax)" in message and "NEGATIVE, POSITIVE" in message


def test_with_int8_the_student_is_not_rescored_and_the_teachers_rows_are(tiny_model, student, texts):
    """int8 and a cascade: the student runs int8 (its close calls go to the teacher, not to its own fp32
    copy); the teacher's rows are its int8 ones with int8's near ties (here: every one) rescored in fp32."""
    task = cascade(tiny_model, student, 0.2, "int8", rescore_margin=0.99)
    column, stats = task.annotate(texts)
    by_teacher = np.array(column.field("model").to_pylist()) == "teacher"
    assert 0 < by_teacher.sum() < len(texts)
    assert stats.rescored == by_teacher.sum() == stats.labelled_by["teacher"]
    probs = np.array(column.field("probs").to_pylist())
    np.testing.assert_allclose(probs[by_teacher], reference(tiny_model, texts)[by_teacher], atol=1e-4)
    assert len(task.engine._loaded) == 3, "student int8, teacher int8, teacher fp32: no fp32 student"


def test_the_model_field_is_in_the_type_only_for_a_cascade_that_keeps_probs():
    plain = TaskSpec(name="s", kind="sentiment", model="m", keep_probs=True)
    assert "model" not in [f.name for f in label_type(plain)]
    with_student = TaskSpec(name="s", kind="sentiment", model="m", student="st", cascade_margin=0.1, keep_probs=True)
    assert label_type(with_student).field("model").type == pa.string()
    without_probs = TaskSpec(name="s", kind="sentiment", model="m", student="st", cascade_margin=0.1)
    assert [f.name for f in label_type(without_probs)] == ["label", "score"]


def test_hand_off_replaces_exactly_the_close_calls_and_adds_the_second_models_time():
    logits = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.54, 0.46], [0.2, 0.8]], dtype=np.float32))
    asked: list[list[int]] = []

    def second(rows: np.ndarray) -> tuple[np.ndarray, BatchStats]:
        asked.append(rows.tolist())
        return np.full((len(rows), 2), [5.0, 0.0], dtype=np.float32), BatchStats(engine_s=2.0, rescored=1)

    stats = BatchStats(engine_s=1.0)
    near = hand_off(logits, 0.1, False, second, stats)
    assert near.tolist() == asked[0] == [0, 2]  # gaps 0 and 0.08; 0.8 and 0.6 stay
    assert logits[[0, 2]].tolist() == [[5.0, 0.0], [5.0, 0.0]] and stats.engine_s == 3.0 and stats.rescored == 1
    assert close_calls(np.array([[0.5, 0.5]]), 0.0).size == 0, "margin 0 hands nothing on"
    assert close_calls(np.array([[0.5], [0.9]]), 0.5).size == 0, "one label: nothing to swap"


def test_the_worker_stages_and_hashes_the_student_beside_the_task_model(tiny_model, student):
    from batchnlp.execution.worker import ModelPlugin, ModelSettings
    from batchnlp.inference.models.stage import content_checksums, weights_of

    spec = TaskSpec(name="sentiment", kind="sentiment", model=str(tiny_model), student=str(student), cascade_margin=0.2)
    plugin = ModelPlugin(ModelSettings((spec,), "cpu", "fp32", 4096, None, None, {}))
    plugin.load()
    assert plugin.students == {"sentiment": weights_of(content_checksums(student))}
    assert plugin.checksums["sentiment"] == weights_of(content_checksums(tiny_model))
    assert plugin.tasks["sentiment"].student is not None
