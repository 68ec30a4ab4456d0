"""Live progress of a run, fed by the runner's callbacks.

:meth:`ProgressReporter.start` takes the plan (every unit, with the planner's row estimate,
and the units kept from an interrupted run) and the Dask client (its dashboard address);
:meth:`ProgressReporter.on_part` takes each finished unit's :class:`PartResult`. Three modes:

- ``bar``: an interactive terminal gets a live rich bar on stderr (log lines print above it);
- ``log``: anything else (CI, AWS Batch's CloudWatch stream) gets a plain log line every
  :data:`DEFAULT_INTERVAL` seconds (``BATCHNLP_PROGRESS_INTERVAL``) and one at the end;
- ``off``: ``--quiet``.

Each finished unit is also logged as a ``unit_done`` event and the end as ``job_done`` (INFO
with ``--log-format json`` or in ``log`` mode, DEBUG under a bar), with structured fields.

Failures and retries, honestly: a unit that raises stops the whole job (the runner cancels the
rest), so the failures a running job can have are rows rejected by the model step and bad input
lines skipped or quarantined, both counted here. A unit whose worker died is rescheduled by the
Dask scheduler; the reporter counts those retries by asking the scheduler, every few seconds,
how often each of this run's tasks was on a worker that died (``TaskState.suspicious``). Where
the scheduler refuses to run that function (a hardened external cluster), retries show as ``?``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from batchnlp.ledger.record import PartResult, redacted_unit
from batchnlp.observe.logs import bind

logger = logging.getLogger(__name__)

INTERVAL_ENV = "BATCHNLP_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between plain progress lines when stderr is not a terminal
POLL_SECONDS = 2.0  # how often a bar refreshes its retry count from the scheduler
MODES = ("bar", "log", "off")


def choose_mode(quiet: bool, log_format: str, stream: Any = None) -> str:
    """``off`` when quiet; a bar on an interactive terminal with text logs; plain lines otherwise."""
    if quiet:
        return "off"
    from rich.console import Console

    console = Console(file=stream, stderr=stream is None)
    return "bar" if log_format == "text" and console.is_terminal and not console.is_dumb_terminal else "log"


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value > 0 else default


class ProgressReporter:
    """Counts finished units and shows them; a context manager that always stops its bar and thread."""

    def __init__(
        self,
        mode: str = "log",
        *,
        interval: float | None = None,
        unit_events: bool = False,
        console: Any = None,
        clock: Any = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.interval = interval if interval is not None else interval_from_env()
        self.unit_level = logging.INFO if unit_events or mode == "log" else logging.DEBUG
        self.clock = clock
        self.console = console
        self.run_id: str | None = None
        self.dashboard: str | None = None
        self.units_total = 0
        self.units_kept = 0
        self.units_done = 0  # finished in this run, kept ones not included
        self.rows_estimate: int | None = None
        self.rows_kept = 0
        self.rows_in = 0
        self.rows_out = 0
        self.rejected = 0
        self.bad_lines = 0
        self.tokens = 0
        self.retries: int | None = 0
        self.started: float | None = None
        self._client: Any = None
        self._bar: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_line = 0.0
        self._polled = False  # the scheduler answered once: a later failure is its shutdown, keep the count

    # --- callbacks -------------------------------------------------------------------------------

    def start(
        self,
        run_id: str | None,
        units: Iterable[Any],
        kept: Iterable[PartResult] = (),
        client: Any = None,
        dashboard: str | None = None,
        rows_per_unit: int | None = None,
    ) -> None:
        """The plan: ``units`` (WorkUnits; their ``rows`` is the planner's estimate where it has
        one, else ``rows_per_unit``, the size JSONL byte ranges were cut for), units kept from an
        interrupted run, and the Dask client when one is up (its dashboard, its retries)."""
        units, kept = list(units), list(kept)
        self.run_id = run_id
        bind(run_id=run_id or None)
        self.units_total = len(units)
        estimates = [u.rows if u.rows is not None else rows_per_unit for u in units]
        self.rows_estimate = sum(estimates) if estimates and all(r is not None for r in estimates) else None
        self.units_kept = len(kept)
        self.rows_kept = sum(r.rows_in for r in kept)
        # Failures count over the whole output, kept units included; rates only over this run's units.
        self.rejected = sum(r.rejected for r in kept)
        self.bad_lines = sum(r.bad_lines for r in kept)
        self._client = client
        if dashboard is None and client is not None:
            dashboard = getattr(client, "dashboard_link", None)
        self.dashboard = dashboard
        self.started = self.clock()
        self._last_line = self.started
        logger.log(
            self.unit_level,
            "progress: %d units (%s rows estimated), %d kept from an interrupted run%s",
            self.units_total,
            f"{self.rows_estimate:,}" if self.rows_estimate is not None else "?",
            self.units_kept,
            f"; dashboard {dashboard}" if dashboard else "",
            extra={
                "event": "job_start",
                "units": self.units_total,
                "units_kept": self.units_kept,
                "rows_estimate": self.rows_estimate,
                "dashboard": dashboard,
            },
        )
        if self.mode == "bar":
            self._start_bar()
        if self.mode != "off" and (self.mode == "log" or client is not None):
            self._thread = threading.Thread(target=self._tick, name="batchnlp-progress", daemon=True)
            self._thread.start()

    def on_part(self, result: PartResult) -> None:
        """One unit finished (the runner's ``on_part``)."""
        with self._lock:
            self.units_done += 1
            self.rows_in += result.rows_in
            self.rows_out += result.rows_out
            self.rejected += result.rejected
            self.bad_lines += result.bad_lines
            self.tokens += result.tokens
        logger.log(
            self.unit_level,
            "unit %s done: %d rows in, %d out, %d rejected, %d tokens in %.1f s",
            result.unit.id,
            result.rows_in,
            result.rows_out,
            result.rejected,
            result.tokens,
            result.busy_seconds,
            extra={
                "event": "unit_done",
                "unit": result.unit.id,
                "source": redacted_unit(result.unit).describe(),
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "rejected": result.rejected,
                "bad_lines": result.bad_lines,
                "tokens": result.tokens,
                "seconds": round(result.busy_seconds, 3),
                "stage_seconds": {key: round(value, 3) for key, value in result.seconds.items()},
                "worker": result.worker,
                "units_done": self.units_done + self.units_kept,
                "units": self.units_total,
            },
        )
        self._refresh()

    def finish(self, summary: Any = None) -> None:
        """The job committed: stop the bar, log the last progress line and a ``job_done`` event."""
        self._halt()
        if self.mode == "log":
            self._log_line(final=True)
        if summary is None:
            self.close()
            return
        t = summary.totals
        logger.log(
            logging.DEBUG if self.mode == "bar" else logging.INFO,
            "job done: %d rows out of %d in %d parts, %d rejected, %d bad lines, %.1f s",
            t.rows_out,
            t.rows_in,
            t.parts,
            t.rejected,
            t.bad_lines,
            summary.wall_seconds,
            extra={
                "event": "job_done",
                "run_id": summary.run_id,
                "output": summary.output,
                "already_complete": summary.already_complete,
                "units_run": summary.units_run,
                "units_kept": summary.units_kept,
                **{key: getattr(t, key) for key in ("parts", "rows_in", "rows_out", "rejected", "bad_lines", "tokens")},
                "rejected_by_reason": t.to_record()["rejected_by_reason"],
                "retries": self.retries,
                "wall_seconds": round(summary.wall_seconds, 3),
                "rows_per_second": round(summary.rows_per_second, 2),
            },
        )
        self.close()

    def close(self) -> None:
        """Stop the bar and the ticker (also on failure); idempotent."""
        self._halt()
        bind(run_id=None)

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        self._client = None
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- figures ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self.started if self.started is not None else 0.0

    def rates(self) -> tuple[float, float]:
        """Rows and tokens per second over the units this run finished (kept ones took no time)."""
        elapsed = self.elapsed()
        return (self.rows_in / elapsed, self.tokens / elapsed) if elapsed > 0 else (0.0, 0.0)

    def eta(self) -> float | None:
        """Seconds left at the current row rate; None until a rate or an estimate exists."""
        if self.units_done + self.units_kept >= self.units_total and self.units_total:
            return 0.0
        rows_per_s, _ = self.rates()
        if self.rows_estimate is None or rows_per_s <= 0:
            return None
        return max(self.rows_estimate - self.rows_kept - self.rows_in, 0) / rows_per_s

    def stats(self) -> str:
        """One line: units, rows, rates, ETA, failures and retries."""
        rows_per_s, tokens_per_s = self.rates()
        estimate = f"/~{self.rows_estimate:,}" if self.rows_estimate is not None else ""
        retries = "?" if self.retries is None else str(self.retries)
        return (
            f"{self.units_done + self.units_kept}/{self.units_total} units"
            + (f" ({self.units_kept} kept)" if self.units_kept else "")
            + f", {self.rows_kept + self.rows_in:,}{estimate} rows, {rows_per_s:,.0f} rows/s, "
            f"{tokens_per_s:,.0f} tokens/s, ETA {_duration(self.eta())}, "
            f"{self.rejected} rejected, {self.bad_lines} bad lines, {retries} retried"
        )

    # --- output ----------------------------------------------------------------------------------

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        reporter = self

        class _Bar(Progress):
            def get_renderables(self) -> Any:
                yield self.make_tasks_table(self.tasks)
                yield f"[dim]{reporter._detail()}[/dim]"

        console = self.console or Console(stderr=True)
        self._bar = _Bar(
            SpinnerColumn(),
            TextColumn("[bold]batchnlp[/bold]"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[line]}"),
            console=console,
            redirect_stderr=True,
            redirect_stdout=False,
            refresh_per_second=4,
        )
        total = self.rows_estimate if self.rows_estimate is not None else self.units_total
        self._task = self._bar.add_task("run", total=total or None, line="")
        self._bar.start()
        self._refresh()

    def _detail(self) -> str:
        rows_per_s, tokens_per_s = self.rates()
        retries = "?" if self.retries is None else self.retries
        return (
            f"{rows_per_s:,.0f} rows/s  {tokens_per_s:,.0f} tokens/s  ETA {_duration(self.eta())}  "
            f"rejected {self.rejected}  bad lines {self.bad_lines}  retried {retries}"
            + (f"  dashboard {self.dashboard}" if self.dashboard else "")
        )

    def _refresh(self) -> None:
        if self._bar is None:
            return
        done = self.units_done + self.units_kept
        completed = self.rows_kept + self.rows_in if self.rows_estimate is not None else done
        total = self.rows_estimate if self.rows_estimate is not None else self.units_total
        if done >= self.units_total:  # the estimate was only an estimate
            total = completed
        self._bar.update(
            self._task,
            completed=completed,
            total=max(total or 0, completed) or None,
            line=f"{done}/{self.units_total} units  {self.rows_kept + self.rows_in:,} rows",
        )

    def _log_line(self, final: bool = False) -> None:
        self._last_line = self.clock()
        rows_per_s, tokens_per_s = self.rates()
        logger.info(
            "progress%s: %s%s",
            " (done)" if final else "",
            self.stats(),
            f"; dashboard {self.dashboard}" if self.dashboard and not final else "",
            extra={
                "event": "progress",
                "units_done": self.units_done + self.units_kept,
                "units": self.units_total,
                "units_kept": self.units_kept,
                "rows_in": self.rows_kept + self.rows_in,
                "rows_estimate": self.rows_estimate,
                "rows_out": self.rows_out,
                "rejected": self.rejected,
                "bad_lines": self.bad_lines,
                "tokens": self.tokens,
                "rows_per_second": round(rows_per_s, 2),
                "tokens_per_second": round(tokens_per_s, 2),
                "eta_seconds": None if (eta := self.eta()) is None else round(eta, 1),
                "retries": self.retries,
                "elapsed_seconds": round(self.elapsed(), 1),
            },
        )

    def _tick(self) -> None:
        """Background thread: poll the scheduler for retries; print a line every ``interval`` (log mode)."""
        period = min(self.interval, POLL_SECONDS) if self._client is not None else self.interval
        while not self._stop.wait(period):
            self._poll_retries()
            if self.mode == "log" and self.clock() - self._last_line >= self.interval - 1e-6:
                self._log_line()
            self._refresh()

    def _poll_retries(self) -> None:
        client = self._client
        if client is None or self.retries is None or self.run_id is None:
            return
        try:
            self.retries = int(client.run_on_scheduler(_retries_on_scheduler, f"batchnlp-{self.run_id}-"))
            self._polled = True
        except Exception as e:  # a scheduler that refuses pickled functions, or one already closed
            if not self._polled and not self._stop.is_set():
                logger.debug("cannot count retries on the scheduler: %s", e)
                self.retries = None


def _retries_on_scheduler(prefix: str, dask_scheduler: Any = None) -> int:
    """Runs on the scheduler: how often this run's tasks were on a worker that died (and were rescheduled)."""
    return sum(ts.suspicious for key, ts in dask_scheduler.tasks.items() if str(key).startswith(prefix))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
