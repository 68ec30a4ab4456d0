"""``batchnlp inspect OUTPUT``: what a run wrote, from its control files, without re-reading the input.

A committed run is described by ``_manifest.json`` (trusted only next to ``_SUCCESS``). An
interrupted one has no manifest, only ``_progress/_job.json`` (the job record) and one
``_progress/part-*.json`` per unit it finished: their sums are what it had done so far.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from batchnlp.errors import OutputError
from batchnlp.io.layout import JOB_RECORD, MANIFEST, PROGRESS, SUCCESS
from batchnlp.io.storage import Location, storage_errors
from batchnlp.ledger.lock import live_holder, read_lock
from batchnlp.ledger.record import JobRecord, Manifest, PartResult, Totals
from batchnlp.tasks import TASKS

TEXT_WIDTH = 60  # characters of text shown per row
# Terminal escape sequences (CSI such as colours and cursor moves, OSC such as titles and links,
# and the two-character ones), then any other control character, and the Unicode controls that
# reorder how a line is displayed. A cell is the data's text: it may move nothing on the screen.
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BLANK = re.compile(r"[\t\n\v\f\r]")


@dataclass
class RunInfo:
    """A run as its control files tell it."""

    output: str
    status: str  # committed | running | interrupted
    run_id: str | None
    spec: dict[str, Any]
    models: dict[str, Any]
    totals: Totals
    parts: list[str]  # part file names (--partition-by: paths below OUTPUT), in unit order
    units_planned: int | None = None  # None: an interrupted run's job record may not say
    device: list[str] = field(default_factory=list)
    precision: list[str] = field(default_factory=list)
    wall_seconds: float | None = None
    committed_at: str | None = None
    version: str | None = None
    manifest_without_success: bool = False
    shards: int | None = None  # a sharded run not committed yet: its shard count (batchnlp.execution.shards.plan)
    shards_left: list[int] = field(default_factory=list)  # ...and the shards with units still to run


def load(output: str, storage_options: dict[str, Any] | None = None) -> RunInfo:
    """Read OUTPUT's manifest, or its progress records when the run did not commit."""
    location = Location(output, storage_options or {})
    fs = location.fs
    display = location.display()
    with storage_errors("read", display):
        finished = fs.exists(location.child(SUCCESS))
        has_manifest = fs.exists(location.child(MANIFEST))
        if finished and has_manifest:
            return _committed(display, Manifest.from_record(json.loads(fs.cat_file(location.child(MANIFEST)))))
        job_path = location.child(f"{PROGRESS}/{JOB_RECORD}")
        if not fs.exists(job_path):
            raise OutputError(
                f"{display} holds no batchnlp run: neither {MANIFEST} with {SUCCESS} nor {PROGRESS}/{JOB_RECORD}"
            )
        job = JobRecord.from_record(json.loads(fs.cat_file(job_path)))
        lock = read_lock(location)
        records = [json.loads(fs.cat_file(p)) for p in sorted(fs.glob(location.child(f"{PROGRESS}/part-*.json")))]
    results = sorted((PartResult.from_record(r) for r in records), key=lambda r: r.unit.index)
    spec = job.spec
    shards = job.sharding.shards if job.sharding else None
    return RunInfo(
        output=display,
        # A live owner's lock (renewed, process alive) means the run is still writing.
        status="running" if job.run_id and live_holder(lock) == job.run_id else "interrupted",
        run_id=job.run_id,
        spec=spec,
        models={
            task["name"]: {
                "task": task["kind"],
                "ref": task["model"],
                "version": job.model_versions.get(task["name"]),
            }
            for task in spec.get("tasks", [])
        },
        totals=sum(results, Totals()),
        parts=[path for r in results for path in r.manifest_entry().paths],
        units_planned=job.units,
        device=sorted({r.device for r in results}),
        precision=sorted({r.precision for r in results}),
        version=job.batchnlp_version,
        manifest_without_success=has_manifest,
        shards=shards,
        shards_left=_shards_left(shards, job.units, results),
    )


def _committed(display: str, manifest: Manifest) -> RunInfo:
    return RunInfo(
        output=display,
        status="committed",
        run_id=manifest.run_id,
        spec=manifest.spec,
        models=manifest.models,
        totals=manifest.totals,
        parts=[path for part in manifest.parts for path in part.paths],
        units_planned=len(manifest.parts),
        device=manifest.device,
        precision=manifest.precision,
        wall_seconds=manifest.wall_seconds,
        committed_at=manifest.committed_at,
        version=manifest.batchnlp_version,
    )


def _shards_left(shards: int | None, units: int | None, results: list[PartResult]) -> list[int]:
    """The shards of a sharded run that still have units to run (unit i is shard i mod N's)."""
    from batchnlp.execution.shards.plan import shard_of

    if not shards:
        return []
    done = {r.unit.index for r in results}
    return sorted({shard_of(i, shards) for i in range(units or 0) if i not in done})


def _sharded_status(info: RunInfo) -> str:
    head = f"SHARDED over {info.shards}, not committed: {info.totals.parts} of {info.units_planned} units done"
    commit = f"batchnlp commit {info.output} --run-id {info.run_id}"
    if not info.shards_left:
        return f"{head}; commit it: {commit}"
    return f"{head}; shards {', '.join(map(str, info.shards_left))} have units left: run them, then {commit}"


def summary(info: RunInfo) -> str:
    """The run in a few readable lines."""
    t, spec = info.totals, info.spec
    if info.status == "committed":
        status = f"committed {info.committed_at}" if info.committed_at else "committed"
    elif info.shards:
        status = _sharded_status(info)
    elif info.status == "running":
        status = f"RUNNING: {t.parts} of {info.units_planned or '?'} units committed so far"
    elif info.units_planned:
        status = f"INTERRUPTED: {t.parts} of {info.units_planned} units committed; finish it with --resume"
    else:
        status = f"INTERRUPTED: {t.parts} units committed so far; finish it with --resume"
    if info.manifest_without_success:
        status += f" ({MANIFEST} without {SUCCESS}: a commit that died half-way)"
    lines = [
        f"run        {info.run_id or '?'}" + (f" (batchnlp {info.version})" if info.version else ""),
        f"status     {status}",
        f"input      {spec.get('input', '?')}",
        f"output     {info.output}",
    ]
    for name, model in info.models.items():
        lines.append(f"task       {name} ({model.get('task')}): {model.get('ref')} version {model.get('version')}")
    device = ", ".join(info.device) or spec.get("device", "?")
    precision = ", ".join(info.precision) or spec.get("precision", "?")
    lines.append(f"device     {device}, {precision}")
    lines.append(f"rows       {t.rows_in:,} in, {t.rows_out:,} out, {t.rejected:,} rejected")
    for reason, count in t.to_record()["rejected_by_reason"].items():
        lines.append(f"             {count:,} {reason}")
    if t.bad_lines:
        where = "quarantined under _rejected/" if spec.get("on_bad_lines") == "quarantine" else "skipped"
        first = t.bad_line_examples[0] if t.bad_line_examples else None
        example = f"; first {first['source']}:{first['line']} ({first['reason']})" if first else ""
        lines.append(f"bad lines  {t.bad_lines:,} input lines that were not JSON objects, {where}{example}")
    lines.append(f"tokens     {t.tokens:,} ({t.padded_tokens:,} with padding)")
    if info.wall_seconds:
        lines.append(
            f"time       {info.wall_seconds:.1f} s wall: {t.rows_out / info.wall_seconds:,.1f} rows/s, "
            f"{t.tokens / info.wall_seconds:,.0f} tokens/s"
        )
    worker = t.to_record()["worker_seconds"]
    if worker:
        lines.append("worker s   " + ", ".join(f"{k} {v:.1f}" for k, v in worker.items()))
    lines.append(f"parts      {len(info.parts)} files, {t.bytes / 1e6:,.1f} MB" + _part_range(info.parts))
    return "\n".join(lines)


def _part_range(parts: list[str]) -> str:
    if not parts:
        return ""
    return f": {parts[0]}" if len(parts) == 1 else f": {parts[0]} … {parts[-1]}"


def first_rows(output: str, info: RunInfo, n: int, storage_options: dict[str, Any] | None = None) -> list[dict]:
    """The first ``n`` annotated rows of the run at ``output``, in unit order, read from its parts."""
    location = Location(output, storage_options or {})
    fs = location.fs
    rows: list[dict[str, Any]] = []
    for name in info.parts:
        if len(rows) >= n:
            break
        with storage_errors("read", location.display(location.child(name))), fs.open(location.child(name)) as f:
            rows.extend(_part_rows(f, name, n - len(rows)))
    return rows


def _part_rows(handle: Any, name: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows of one part file, read back by the format that wrote it."""
    from batchnlp.io.formats import FORMATS
    from batchnlp.io.formats.writers import OutputFormat

    written = OutputFormat.of_part(name)
    return FORMATS[written.format].head(handle, n, written.compression)


def rows_table(info: RunInfo, rows: list[dict[str, Any]], width: int = 100) -> Any:
    """A rich table ``width`` columns wide at most: the id column (if any), the text (cut to fit,
    at most :data:`TEXT_WIDTH` characters), one column per task (each value as its kind's summary
    shows it: label (score), 'answer' (score)), and _error. Every cell and heading is plain text
    (:class:`rich.text.Text`): a value holding ``[/x]`` or ``[bold]`` is shown as written, never read
    as rich markup."""
    from rich.table import Table
    from rich.text import Text

    text_column = info.spec.get("text_column") or "text"
    id_column = info.spec.get("id_column")
    # A manifest from before models were recorded names its tasks in its spec only.
    kinds = {name: model.get("task") for name, model in info.models.items()} or {
        task["name"]: task.get("kind") for task in info.spec.get("tasks", [])
    }
    written = [column for name in kinds for column in _task_columns(info, name)]  # ner --redact: two
    columns = ([id_column] if id_column else []) + [text_column, *written, "_error"]
    cells = [{name: _cell(row.get(name), kinds.get(name)) for name in columns} for row in rows]
    natural = {name: min(max([len(name), *(len(c[name]) for c in cells)]), 40) for name in columns}
    others = sum(natural[name] + 3 for name in columns if name != text_column) + 4
    text_width = max(12, min(TEXT_WIDTH, width - others))
    table = Table()
    for name in columns:
        fixed = text_width if name == text_column else natural[name]
        table.add_column(Text(printable(name)), no_wrap=True, overflow="ellipsis", min_width=fixed, max_width=fixed)
    for row in cells:
        row[text_column] = _cut(row[text_column], text_width)
        table.add_row(*(Text(row[name]) for name in columns))
    return table


def _task_columns(info: RunInfo, name: str) -> list[str]:
    """The columns task ``name`` wrote, as its spec says (:func:`batchnlp.tasks.column_names`): its own, and
    a spread value's others; its own alone for a spec this version cannot read."""
    from batchnlp.spec import TaskSpec
    from batchnlp.tasks import column_names

    known = {f.name for f in dataclasses.fields(TaskSpec)}
    for task in info.spec.get("tasks", []):
        if task.get("name") == name and task.get("kind") in TASKS:
            return column_names(TaskSpec(**{key: value for key, value in task.items() if key in known}))
    return [name]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value: Any, kind: str | None) -> str:
    """A task's value as its summary shows it (:mod:`batchnlp.tasks.summaries`); anything else as text.
    Either way :func:`printable`: the data cannot drive the terminal."""
    if value is None:
        return ""
    if isinstance(value, dict | list) and kind in TASKS:  # a task's struct, or an embedding's list
        return printable(TASKS[kind].summary.cell(value))
    if isinstance(value, dict):
        return printable(json.dumps(value, default=str))[:TEXT_WIDTH]
    return printable(str(value))


def printable(text: str) -> str:
    """``text`` on one line with no terminal escape sequence and no control character left."""
    return _CONTROL.sub("", _BLANK.sub(" ", _ESCAPE_SEQUENCE.sub("", text)))
