"""The job's outcome as CloudWatch metrics, from one log line: alarms on a night need no agent.

With ``--log-format json``, the last line a run prints is a CloudWatch Embedded Metric Format
(EMF) object: its ``_aws`` key tells CloudWatch Logs to turn the named fields into metrics in the
``batchnlp`` namespace as the log event arrives (the awslogs driver of AWS Batch sends it there).
It is printed whether the run committed or failed, and whatever the log level, so a
"night not committed" alarm (``Committed`` summed over a day below 1, missing data breaching: see
``infra/aws/batch.yaml``) fires when a night failed and when no run started at all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchnlp.ledger.record import Totals

NAMESPACE = "batchnlp"
JOB_VARIABLE = "BATCHNLP_METRICS_JOB"  # the Job dimension; the stack sets its name, so one alarm per stack
METRICS = {
    "Committed": "Count",  # 1: the output holds this run, committed now or before; 0: it failed or stopped
    "Rows": "Count",
    "Tokens": "Count",
    "BadLines": "Count",
    "Rejected": "Count",
    "Seconds": "Seconds",
}


def emf_fields(totals: Totals | None, committed: bool, seconds: float, exit_code: int) -> dict[str, Any]:
    """The EMF object: metric definitions under ``_aws``, their values beside them."""
    t = totals or Totals()
    values = {
        "Committed": int(committed),
        "Rows": t.rows_out,
        "Tokens": t.tokens,
        "BadLines": t.bad_lines,
        "Rejected": t.rejected,
        "Seconds": round(seconds, 3),
    }
    definition = {
        "Namespace": NAMESPACE,
        "Dimensions": [["Job"]],
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in METRICS.items()],
    }
    return {
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [definition]},
        "Job": os.environ.get(JOB_VARIABLE) or NAMESPACE,
        **values,
        "exit_code": exit_code,
    }


def emit(fields: dict[str, Any]) -> None:
    """One JSON log line carrying ``fields``, past any level filter (``-q`` keeps it too)."""
    from batchnlp.observe.logs import emit as emit_line

    emit_line("job metrics", "job_metrics", logging.INFO, __name__, **fields)


@contextmanager
def job_metrics(enabled: bool, outcome: dict[str, Any]) -> Iterator[None]:
    """With JSON logs, end a command with the EMF line, whether it succeeded or not (its exit
    code is a dimension); ``outcome`` receives the command's summary, or ``child_node`` where a
    multi-node job's child node runs (the main node reports the job)."""
    started = time.monotonic()
    code: int = 0
    try:
        yield
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        raise
    except BaseException:
        code = 1
        raise
    finally:
        if enabled and not outcome.get("child_node"):
            summary = outcome.get("summary")
            totals = summary.totals if summary is not None else None
            committed = summary is not None and code == 0 and summary.shard is None  # a shard commits nothing
            emit(emf_fields(totals, committed, time.monotonic() - started, code))
            # The line stays last: what distributed says as the interpreter tears down its comms
            # ("Closing dangling stream" after a SIGTERM mid-start-up) is no news of the job.
            logging.getLogger("distributed").setLevel(logging.ERROR)
