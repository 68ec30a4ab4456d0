"""GracefulStop in one process: where a signal lands decides nothing about whether the run stops."""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import pytest

from batchnlp.errors import Interrupted
from batchnlp.execution.shutdown import GracefulStop


class SignallingFormatter(logging.Formatter):
    """Sends SIGTERM to this process while a log line is being formatted: the handler runs inside
    logging's ``emit``, whose ``except Exception`` reports and swallows what a handler raises."""

    def format(self, record: logging.LogRecord) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        return super().format(record)


@pytest.fixture
def signalling_logger():
    handler = logging.StreamHandler()
    handler.setFormatter(SignallingFormatter())
    log = logging.getLogger("tests.signalling")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    log.removeHandler(handler)


def test_a_signal_inside_a_log_call_stops_the_run(signalling_logger, capsys):
    """CI once saw a SIGTERM land in the runner's 'planned N units' log line: logging swallowed the
    stop, printed '--- Logging error ---' and the run went on to exit 0."""
    stop = GracefulStop()
    with stop.installed(), pytest.raises(Interrupted) as raised:
        signalling_logger.info("planned 1 units")
    assert raised.value.exit_code == 128 + signal.SIGTERM
    assert "Logging error" not in capsys.readouterr().err


def test_a_stop_swallowed_by_user_code_still_ends_the_run_before_any_unit_starts():
    stop = GracefulStop()
    with stop.installed():
        with contextlib.suppress(BaseException):  # code that should not, but might, catch everything
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted, match="SIGTERM received: no unit had started"), stop.draining():
            pytest.fail("a unit started after the signal")


def test_a_first_signal_while_draining_only_starts_the_drain_and_a_second_ends_it():
    stop = GracefulStop(grace_seconds=5)
    with stop.installed(), stop.draining():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested.is_set() and "SIGTERM received" in stop.reason
        with pytest.raises(Interrupted, match="a second signal"):
            os.kill(os.getpid(), signal.SIGINT)
