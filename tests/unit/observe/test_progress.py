"""The progress reporter, driven with fake unit results: a bar on a terminal, plain lines elsewhere, none if quiet."""

from __future__ import annotations

import io
import logging
from typing import ClassVar

import pytest
from rich.console import Console

from batchnlp.ledger.record import PartResult
from batchnlp.observe.progress import ProgressReporter, _duration, _retries_on_scheduler, choose_mode
from tests.support.helpers import part_result, unit

DASHBOARD = "http://127.0.0.1:8787/status"


def result(index: int, rows: int = 100, rejected: int = 1, bad_lines: int = 0) -> PartResult:
    return part_result(index, rows, rejected, bad_lines=bad_lines)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    dashboard_link = DASHBOARD

    def __init__(self, retries: int | Exception = 0) -> None:
        self.retries = retries
        self.prefixes: list[str] = []

    def run_on_scheduler(self, function, prefix):
        self.prefixes.append(prefix)
        if isinstance(self.retries, Exception):
            raise self.retries
        return self.retries


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_terminal_the_log_format_and_quiet(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    assert choose_mode(False, "text", Tty()) == "bar"
    assert choose_mode(False, "text", io.StringIO()) == "log"  # CI, AWS Batch: not a terminal
    assert choose_mode(False, "json", Tty()) == "log"  # JSON logs are for machines: events, no bar
    assert choose_mode(True, "text", Tty()) == "off"


def test_bar_shows_units_rows_rates_eta_failures_retries_and_the_dashboard():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=220, color_system=None)
    clock = Clock()
    reporter = ProgressReporter("bar", console=console, clock=clock)
    client = FakeClient(retries=2)
    with reporter:
        reporter.start("run-1", [unit(i) for i in range(4)], kept=[result(0)], client=client)
        clock.now += 10
        reporter.on_part(result(1, rejected=2, bad_lines=1))
        reporter._poll_retries()
        reporter._refresh()
        assert reporter.eta() == pytest.approx(20.0)  # 400 estimated, 200 done: 200 left at 10 rows/s
    text = out.getvalue()
    assert "2/4 units" in text and "200 rows" in text
    assert "10 rows/s" in text and "200 tokens/s" in text and "ETA 0:20" in text
    assert "rejected 3" in text and "bad lines 1" in text and "retried 2" in text
    assert f"dashboard {DASHBOARD}" in text
    assert client.prefixes == ["batchnlp-run-1-"]  # only this run's tasks


def test_plain_lines_every_interval_and_at_the_end_when_not_a_terminal(caplog):
    caplog.set_level(logging.DEBUG, logger="batchnlp")
    clock = Clock()
    reporter = ProgressReporter("log", interval=30, clock=clock)
    reporter.start("run-2", [unit(0, None), unit(1, None)], rows_per_unit=100, dashboard=DASHBOARD)
    clock.now += 5
    reporter.on_part(result(0))
    clock.now += 30
    reporter._log_line()
    clock.now += 5
    reporter.on_part(result(1))
    reporter.finish()
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "progress"]
    assert lines[0].startswith("progress: 1/2 units, 100/~200 rows,")
    assert "tokens/s" in lines[0] and "ETA 0:35" in lines[0] and "0 retried" in lines[0] and DASHBOARD in lines[0]
    assert lines[-1].startswith("progress (done): 2/2 units") and "ETA 0:00" in lines[-1]
    units = [r for r in caplog.records if getattr(r, "event", None) == "unit_done"]
    assert [r.unit for r in units] == ["part-00000", "part-00001"]
    assert all(r.levelno == logging.INFO for r in units)


def test_the_ticker_thread_prints_lines_on_its_own():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("batchnlp.observe.progress")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with ProgressReporter("log", interval=0.05) as reporter:
            reporter.start("run-3", [unit(0)])
            import time

            time.sleep(0.3)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    assert sum(getattr(r, "event", None) == "progress" for r in records) >= 2


def test_quiet_prints_nothing(caplog):
    caplog.set_level(logging.INFO, logger="batchnlp")
    out = io.StringIO()
    with ProgressReporter("off", console=Console(file=out, force_terminal=True)) as reporter:
        reporter.start("run-4", [unit(0)], client=FakeClient())
        reporter.on_part(result(0))
    assert out.getvalue() == ""
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_retries_come_from_the_scheduler_or_show_as_unknown():
    class Task:
        def __init__(self, suspicious: int) -> None:
            self.suspicious = suspicious

    class Scheduler:
        tasks: ClassVar = {"batchnlp-r-part-00000": Task(1), "batchnlp-r-part-00001": Task(2), "other": Task(5)}

    assert _retries_on_scheduler("batchnlp-r-", dask_scheduler=Scheduler()) == 3
    reporter = ProgressReporter("log", interval=60)
    reporter.start("r", [unit(0)], client=FakeClient(RuntimeError("pickled functions refused")))
    reporter._poll_retries()
    reporter.close()
    assert reporter.retries is None and "? retried" in reporter.stats()


def test_durations():
    assert [_duration(None), _duration(0), _duration(75.4), _duration(3725)] == ["?", "0:00", "1:15", "1:02:05"]
