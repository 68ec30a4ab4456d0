"""``${name}`` placeholders in job specs, so one spec serves every night and every backfill.

A nightly spec names its partition by date (``input: s3://lake/reviews/dt=${yesterday}/``); the
scheduler passes the date the run is for (``--param run_date=2026-11-25``), so a retry of the
same submission hours later still reads the same partition. Values come from ``--param``, then
the spec's own ``params:`` mapping, then the built-ins:

- ``run_date``: the date the run is for, ``YYYY-MM-DD`` (``--run-date``); default ``today``
  (UTC). An ISO timestamp such as EventBridge Scheduler's ``<aws.scheduler.scheduled-time>``
  gives its date.
- ``yesterday``: the day before ``run_date``.

``$$`` is a literal dollar sign. An unknown name is an error that lists the known ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from string import Template
from typing import Any

from batchnlp.errors import SpecError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render(settings: Mapping[str, Any], params: Mapping[str, Any], today: date | None = None) -> dict[str, Any]:
    """``settings`` with every ``${name}`` in its strings replaced; its ``params`` key is consumed."""
    settings = dict(settings)
    defaults = settings.pop("params", None) or {}
    if not isinstance(defaults, Mapping):
        raise SpecError(f"params must be a mapping of names to values, got {defaults!r}")
    values = {str(key): str(value) for key, value in {**defaults, **params}.items()}
    for name in values:
        if not _NAME.match(name):
            raise SpecError(f"parameter name {name!r} must be letters, digits and _, not starting with a digit")
    run_date = _date(values.get("run_date"), today)
    values = {"yesterday": (run_date - timedelta(days=1)).isoformat(), **values, "run_date": run_date.isoformat()}
    return {key: _substitute(value, values, key) for key, value in settings.items()}


def _date(value: str | None, today: date | None) -> date:
    if value is None or value == "today":
        return today or datetime.now(timezone.utc).date()
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        raise SpecError(
            f"run_date must be a date or ISO timestamp (2026-11-25 or 2026-11-25T02:00:00Z), got {value!r}"
        ) from None


def _substitute(value: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        try:
            return Template(value).substitute(values)
        except KeyError as e:
            raise SpecError(
                f"{where}: unknown parameter ${{{e.args[0]}}}; known: {', '.join(sorted(values))}. "
                f"Pass --param {e.args[0]}=VALUE or add it under params:"
            ) from None
        except ValueError as e:
            raise SpecError(f"{where}: {e} in {value!r}; write $$ for a literal $") from None
    if isinstance(value, Mapping):
        return {key: _substitute(item, values, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(item, values, f"{where}[{index}]") for index, item in enumerate(value)]
    return value
