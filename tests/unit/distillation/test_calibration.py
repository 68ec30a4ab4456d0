"""``batchnlp distill``'s cascade calibration on constructed held-out rows whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from batchnlp.distillation.cascade import TABLE_MARGINS, calibrate, cascade_command, cascade_flags
from batchnlp.tasks.classify import best_two_gap, close_calls


def rows(n: int, disagreeing: dict[int, float]) -> tuple[list[str], np.ndarray, list[str]]:
    """``n`` rows whose student margins are spread over [0.3, 0.99), and that agree with the teacher but
    for the rows of ``disagreeing`` (row → its student margin)."""
    gaps = np.linspace(0.3, 0.99, n, dtype=np.float32)
    student, teacher = ["a"] * n, ["a"] * n
    for row, gap in disagreeing.items():
        gaps[row], student[row] = gap, "b"
    return student, gaps, teacher


def test_the_margin_is_the_smallest_step_that_keeps_the_target_agreement():
    # 200 rows: 99.5% is 199, so one disagreement may stay. Three disagree, at margins 0.031, 0.072 and 0.5:
    # the two lowest must go to the teacher, so the margin must pass 0.072: 0.08.
    student, gaps, teacher = rows(200, {3: 0.031, 7: 0.072, 11: 0.5})
    found = calibrate(student, gaps, teacher)
    assert found["margin"] == 0.08 and found["agreement"] == 199 / 200
    assert found["teacher_share"] == 2 / 200 and found["rows"] == 200 and found["target_agreement"] == 0.995
    table = {row["margin"]: row for row in found["margins"]}
    assert set(TABLE_MARGINS) | {0.05, 0.06, 0.07, 0.08, 0.09, 0.1} == set(table), "finer near the answer"
    assert table[0.0] == {"margin": 0.0, "teacher_rows": 0, "teacher_share": 0.0, "agreement": 197 / 200}
    assert table[0.07]["agreement"] == 198 / 200 and table[0.08]["teacher_rows"] == 2
    assert table[0.5]["teacher_rows"] == 2 + int(np.sum(gaps < 0.5)) - 2
    shares = [row["teacher_share"] for row in found["margins"]]
    assert shares == sorted(shares), "a wider margin never shows the teacher fewer rows"


def test_an_answer_past_half_extends_the_table_to_it():
    student, gaps, teacher = rows(200, {3: 0.031, 7: 0.712, 11: 0.9})
    found = calibrate(student, gaps, teacher)
    assert found["margin"] == 0.72
    assert [row["margin"] for row in found["margins"]][10:] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75]


def test_a_margin_equal_to_a_rows_gap_does_not_hand_it_on_as_in_a_run():
    student, gaps, teacher = rows(200, {3: 0.031, 7: 0.08, 11: 0.5})
    assert calibrate(student, gaps, teacher)["margin"] == 0.09  # gap < margin, strictly, in float32


def test_the_rows_it_counts_are_the_ones_a_run_hands_the_teacher():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([0.7] * 4, size=500).astype(np.float32)
    found = calibrate(["x"] * 500, best_two_gap(scores), ["x"] * 500)
    for row in found["margins"]:
        assert row["teacher_rows"] == len(close_calls(scores, row["margin"])), row


def test_a_student_that_agrees_needs_no_teacher_and_one_sure_and_wrong_has_no_margin():
    student, gaps, teacher = rows(100, {})
    assert calibrate(student, gaps, teacher)["margin"] == 0.0
    student, gaps, teacher = rows(100, {5: 0.995, 6: 0.996})
    found = calibrate(student, gaps, teacher)
    assert found["margin"] is None and found["agreement"] is None
    assert [row["margin"] for row in found["margins"]] == [round(0.05 * i, 2) for i in range(20)], "on to 0.95"
    assert found["margins"][-1]["agreement"] == 0.98
    with pytest.raises(ValueError, match="2 student labels, 3 teacher labels"):
        calibrate(["a", "b"], np.zeros(3), ["a", "b", "c"])


def test_the_command_it_prints():
    assert (
        cascade_flags("classify", "./topics student", 0.08)
        == "--cascade 'classify=./topics student' --cascade-margin 0.08"
    )
    assert cascade_command("classify", "classify", "s3://m/t/", "./s", 0.1) == (
        "batchnlp run INPUT OUTPUT --task classify --model classify=s3://m/t/ "
        "--cascade classify=./s --cascade-margin 0.1"
    )
    assert cascade_command("topics", "classify", "./t", "./s", 0.1) == (
        "batchnlp run --spec SPEC --cascade topics=./s --cascade-margin 0.1"
    )
