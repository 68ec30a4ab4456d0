"""--log-format json: one JSON object per line with run id, unit, event and counts, and never a secret."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.execution.runner import RunSummary
from batchnlp.observe.logs import bind, configure_logging
from batchnlp.observe.progress import ProgressReporter
from tests.support.helpers import unit, write_jsonl
from tests.unit.observe.test_progress import result

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SIGNATURE = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must parse


def assert_no_secret(text: str) -> None:
    for secret in (KEY_ID, SECRET, SIGNATURE, SECRET[:20], SECRET[20:]):
        assert secret not in text


@pytest.fixture
def json_logging():
    configure_logging(logging.INFO, "json")
    yield
    bind(run_id=None)
    configure_logging(logging.INFO)


def test_each_record_is_one_json_object_with_its_fields_and_no_secret(json_logging, capsys):
    log = logging.getLogger("batchnlp.test")
    presigned = f"https://bucket.s3.amazonaws.com/in.jsonl?X-Amz-Credential={KEY_ID}&X-Amz-Signature={SIGNATURE}"
    bind(run_id="20261126T000000Z-abcd1234")
    log.info("reading %s with secret_access_key='%s'", presigned, SECRET, extra={"event": "read", "unit": "part-3"})
    log.info("fields", extra={"event": "x", "source": presigned, "options": {"key": KEY_ID, "secret": SECRET}})
    try:
        raise RuntimeError(f"boom {presigned}")
    except RuntimeError:
        log.exception("failed\nacross lines")
    err = capsys.readouterr().err
    first, second, third = json_lines(err)
    assert first["event"] == "read" and first["unit"] == "part-3" and first["level"] == "INFO"
    assert first["logger"] == "batchnlp.test" and first["run_id"] == "20261126T000000Z-abcd1234"
    assert first["time"].endswith("+00:00") and "reading https://bucket.s3.amazonaws.com/in.jsonl" in first["message"]
    assert second["source"] == "https://bucket.s3.amazonaws.com/in.jsonl"  # extra fields are redacted too
    assert third["event"] == "log" and third["message"] == "failed\nacross lines"
    assert "RuntimeError" in third["exception"]
    assert_no_secret(err)


def test_reporter_events_carry_unit_and_counts(json_logging, capsys):
    reporter = ProgressReporter("log", interval=3600, unit_events=True)
    reporter.start("run-9", [unit(0), unit(1)], dashboard="http://127.0.0.1:8787/status")
    parts = [result(0, rows=120, rejected=2), result(1, rows=80, rejected=0, bad_lines=3)]
    for part in parts:
        reporter.on_part(part)
    totals = parts[0] + parts[1]
    reporter.finish(
        RunSummary(output="file:///out", run_id="run-9", totals=totals, wall_seconds=4.0, units_run=2, units_kept=0)
    )
    events = {}
    for line in json_lines(capsys.readouterr().err):
        events.setdefault(line["event"], []).append(line)
    assert [e["unit"] for e in events["unit_done"]] == ["part-00000", "part-00001"]
    first = events["unit_done"][0]
    counts = (first["run_id"], first["rows_in"], first["rows_out"], first["rejected"], first["tokens"])
    assert counts == ("run-9", 120, 120, 2, 2400)
    assert first["seconds"] == 2.0 and first["stage_seconds"]["read"] == 0.5
    assert first["units_done"] == 1 and first["units"] == 2
    assert events["job_start"][0]["rows_estimate"] == 200
    assert events["progress"][-1]["units_done"] == 2 and events["progress"][-1]["bad_lines"] == 3
    assert events["progress"][-1]["run_id"] == "run-9"
    done = events["job_done"][0]
    assert done["run_id"] == "run-9" and done["rows_out"] == 200 and done["bad_lines"] == 3
    assert done["rejected_by_reason"] == {"text is null": 2} and done["rows_per_second"] == 50.0


@pytest.mark.cluster
def test_a_real_run_logs_json_events_and_cloudwatch_metrics_and_exits_0_with_skipped_lines(tmp_path, tiny_model):
    """One end-to-end run: JSON lines only (stdout holds nothing), a unit_done per unit, job_done, the summary
    as an event, an EMF line last, and exit 0."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review number {i}"} for i in range(40)])
    with source.open("a") as f:
        f.write(f'{{"id": 99, "text": "broken\n{{"secret_access_key": "{SECRET}"\n')
    result = CliRunner().invoke(
        main,
        ["run", str(source), str(tmp_path / "out"), "--model", f"sentiment={tiny_model}", "--workers", "1",
         "--rows-per-partition", "20", "--on-bad-lines", "skip", "--log-format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "", "in a container both streams are one log: no plain-text line anywhere"
    events = json_lines(result.stderr)
    metrics = events[-1]  # CloudWatch Embedded Metric Format: namespace, dimension and metric names under _aws
    definition = metrics["_aws"]["CloudWatchMetrics"][0]
    assert definition["Namespace"] == "batchnlp" and definition["Dimensions"] == [["Job"]]
    names = {"Committed", "Rows", "Tokens", "BadLines", "Rejected", "Seconds"}
    assert {m["Name"] for m in definition["Metrics"]} == names
    assert metrics["Job"] == "batchnlp" and metrics["exit_code"] == 0
    assert (metrics["Committed"], metrics["Rows"], metrics["BadLines"]) == (1, 40, 2) and metrics["Tokens"] > 0
    by_event: dict[str, list[dict]] = {}
    for event in events:
        by_event.setdefault(event["event"], []).append(event)
    done = by_event["job_done"][0]
    assert done["bad_lines"] == 2 and done["rows_in"] == 40 and done["parts"] >= 2
    summary = [event["message"] for event in by_event["summary"]]
    assert summary[0].startswith("wrote 40 rows") and "2 input lines that were not JSON objects skipped" in summary[1]
    units = by_event["unit_done"]
    assert len(units) == done["parts"] and all(u["unit"].startswith("part-") for u in units)
    assert sum(u["rows_in"] for u in units) == 40 and sum(u["tokens"] for u in units) > 0
    if "planned" in by_event:  # the runner logs its plan as an event once it has on_start (issue 7's diff)
        assert all(e.get("run_id") == done["run_id"] for e in [*units, *by_event["planned"]])
    assert_no_secret(result.stderr + result.stdout)


def test_a_failed_run_in_json_mode_says_why_in_a_json_line(tmp_path, tiny_model):
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "missing.jsonl"), str(tmp_path / "out"), "--model", f"sentiment={tiny_model}",
         "--log-format", "json"],
    )  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    events = json_lines(result.stderr)
    failed = next(event for event in events if event["event"] == "failed")
    assert failed["level"] == "ERROR" and failed["exit_code"] == 2 and "missing.jsonl" in failed["message"]
    assert events[-1]["event"] == "job_metrics" and events[-1]["exit_code"] == 2


def test_a_usage_error_in_json_mode_is_a_json_line_too(tmp_path):
    result = CliRunner().invoke(main, ["run", "in.jsonl", "out", "--rows-per-partition", "0", "--log-format", "json"])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = json_lines(result.stderr)
    assert line["event"] == "failed" and "--rows-per-partition" in line["message"]
