"""Log output formats: human text (the default) or one JSON object per line (``--log-format json``).

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (``log`` for a
plain message), ``message``, the job's ``run_id`` once known (see :func:`bind`), and every field
a caller passed with ``extra=``: ``logger.info("...", extra={"event": "unit_done", "unit": ...})``.
Every string in it, message and fields alike, goes through :func:`batchnlp.util.redaction.redact_text`
(URLs also lose user info and query strings), so a field that carries a URL carries no secret.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

from batchnlp.util.redaction import (
    CHATTY_LOGGERS,
    NOISY_LOGGERS,
    RedactingFormatter,
    protect_logging,
    redact_text,
    redact_url,
)

FORMATS = ("text", "json")
# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_context: dict[str, Any] = {}


def bind(**fields: Any) -> None:
    """Fields added to every JSON line from now on (``run_id``); ``None`` removes one."""
    for key, value in fields.items():
        if value is None:
            _context.pop(key, None)
        else:
            _context[key] = value


def redact_value(value: Any) -> Any:
    """``value`` with every string in it redacted, containers walked, anything else made a string."""
    if isinstance(value, str):
        return redact_text(redact_url(value) if "://" in value and " " not in value else value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [redact_value(v) for v in value]
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (CloudWatch Logs and its Insights parse it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": "log",
            **_context,
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(redact_value(entry), ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a live progress bar that redirects
    stderr (rich) prints log lines above itself instead of being torn by them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ and setStream assign it
        pass


def emit(message: str, event: str, level: int = logging.INFO, logger: str = "batchnlp", **fields: Any) -> None:
    """One log line past any level filter, for what a command must always say (its outcome, its
    metrics), ``-q`` included: through the root handlers, so in the chosen format and redacted."""
    record = logging.LogRecord(logger, level, __file__, 0, message, (), None)
    record.__dict__.update(event=event, **fields)
    for handler in logging.getLogger().handlers:
        handler.handle(record)


def configure_logging(level: int, fmt: str = "text") -> None:
    """One stderr handler with redaction; AWS client libraries never below INFO.

    ``fmt`` is ``text`` (time, level, logger, message) or ``json`` (one object per line with the
    record's structured fields, see :mod:`batchnlp.observe.logs`).
    """
    handler = StderrHandler()
    inner = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    # Messages are redacted as records are made (the record factory below), and whatever the
    # handler prints, tracebacks included, by the formatter.
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("batchnlp").setLevel(level)
    for name in NOISY_LOGGERS:  # INFO at most: their DEBUG output carries request headers
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG else logging.WARNING)
    # Never DEBUG: distributed's debug lines dump pickled task payloads (with storage options).
    chatty = "info" if level <= logging.DEBUG else "error" if level >= logging.ERROR else "warning"
    # dask configures the "distributed" logger when it is imported, in this process and in
    # worker processes: its config variable covers both, setLevel covers an earlier import.
    os.environ["DASK_LOGGING__DISTRIBUTED"] = chatty
    os.environ["TRANSFORMERS_VERBOSITY"] = chatty  # likewise transformers' (a checkpoint's load report)
    for name in CHATTY_LOGGERS:  # cluster start-up chatter only with --verbose
        logging.getLogger(name).setLevel(chatty.upper())
    protect_logging()
