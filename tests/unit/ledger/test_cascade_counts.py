"""A cascade's counts: the rows each model labelled, per task, from the parts to the totals, the
manifest, the report and the CLI's summary; records written before cascades still load."""

from __future__ import annotations

import json
from types import SimpleNamespace

from batchnlp.ledger.record import Manifest, PartResult, Totals
from batchnlp.ledger.report import build_report, cascade_counts, render_html
from tests.support.helpers import manifest, part_result

STUDENT = {"model.safetensors": "a" * 64}


def cascaded(index: int, student: int, teacher: int) -> PartResult:
    return part_result(
        index, rows=student + teacher, rejected=0, labelled_by={"sentiment": {"student": student, "teacher": teacher}},
        students={"sentiment": STUDENT},
    )  # fmt: skip


def test_the_totals_add_up_each_cascades_rows_per_model():
    parts = [cascaded(0, 90, 10), cascaded(1, 70, 30), part_result(2)]
    totals = sum(parts, Totals())
    assert totals.labelled_by == {"sentiment": {"student": 160, "teacher": 40}}
    assert parts[0].labelled_by == {"sentiment": {"student": 90, "teacher": 10}}, "the parts are left as they were"
    again = Totals.from_record(json.loads(json.dumps(totals.to_record())))
    assert again == totals
    two = Totals(labelled_by={"a": {"student": 1, "teacher": 2}}) + Totals(labelled_by={"b": {"student": 3}})
    assert two.labelled_by == {"a": {"student": 1, "teacher": 2}, "b": {"student": 3}}


def test_records_from_before_cascades_still_load():
    record = json.loads(json.dumps(part_result(0).to_record()))
    for key in ("labelled_by", "students"):
        del record[key]
    old = PartResult.from_record(record)
    assert old.labelled_by == {} and old.students == {}
    totals = (old + old).to_record()
    del totals["labelled_by"]
    assert Totals.from_record(totals).labelled_by == {}
    written = manifest("r1", [old]).to_record()
    del written["totals"]["labelled_by"]
    assert Manifest.from_record(written).totals.labelled_by == {}


def test_the_report_and_the_summary_say_how_many_rows_each_model_labelled():
    from batchnlp.observe.summary import summary_lines

    parts = [cascaded(0, 90, 10), cascaded(1, 70, 30)]
    committed = manifest("r1", parts)
    committed.models = {
        "sentiment": {
            "task": "sentiment", "ref": "./teacher", "version": "v1", "weights": {"model.safetensors": "b" * 64},
            "student": {"ref": "./student", "version": "v2", "weights": STUDENT, "margin": 0.12},
        }
    }  # fmt: skip
    report = json.loads(json.dumps(build_report(committed, parts)))
    assert report["tasks"]["sentiment"]["labelled_by"] == {"student": 160, "teacher": 40}
    assert report["totals"]["labelled_by"] == {"sentiment": {"student": 160, "teacher": 40}}
    assert (
        cascade_counts(report["totals"]["labelled_by"]) == "sentiment: student 160, teacher 40 (20.0% by the teacher)"
    )
    page = render_html(report)
    assert "inputs labelled by each model of a cascade" in page and "student 160, teacher 40" in page
    assert "./student" in page and "cascade&#x27;s student, margin 0.12" in page

    summary = SimpleNamespace(
        totals=committed.totals, table=None, shard=None, already_complete=False, nothing_new=False,
        manifest=committed, output="out/", wall_seconds=1.0, rows_per_second=200.0, run_id="r1", units_kept=0,
    )  # fmt: skip
    lines = summary_lines(summary)
    assert "cascade, inputs labelled by each model: sentiment: student 160, teacher 40 (20.0% by the teacher)" in lines
    plain = manifest("r2", [part_result(0)])
    assert not [
        line
        for line in summary_lines(SimpleNamespace(**{**vars(summary), "totals": plain.totals}))
        if "cascade" in line
    ]
