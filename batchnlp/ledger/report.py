"""The run report: ``_report.json`` (figures) and ``_report.html`` (one self-contained page).

Built at commit time from the manifest and the parts' results (their per-task statistics,
stage timings and finish times); nothing is read back from the output. The page has inline
CSS and SVG charts drawn here, no scripts and no external URLs, so it opens anywhere, offline.
Every string on it is escaped: ids, reasons and labels come from user data and checkpoints.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime
from html import escape
from typing import Any

from batchnlp.ledger.record import Manifest, PartResult, Totals
from batchnlp.ledger.stats import bin_edges, merge
from batchnlp.tasks import TASKS
from batchnlp.tasks.summaries import ReportSection

REPORT_VERSION = 1
SLOWEST = 10  # units listed by name under the duration chart
MAX_LABELS = 30  # labels drawn per task; the rest are summed as "(other)"
TIME_SPLIT_NOTE = (
    "Worker seconds summed over units. 'tokenise + decode' is a task's time outside the model engine: "
    "tokenising (qa: also checking question lengths) and turning outputs into labels or answers. "
    "'model' is the engine's time less its waits for padded input; on CPU, padding is counted as waiting."
)


def time_split(results: list[PartResult]) -> dict[str, float]:
    """Worker seconds by activity; the parts add up to the summed unit durations."""
    split = dict.fromkeys(("read", "tokenise + decode", "model", "waiting for input", "write"), 0.0)
    for result in results:
        stages = result.seconds
        split["read"] += stages.get("read", 0.0)
        split["write"] += stages.get("write", 0.0)
        engine_total = 0.0
        for key, value in stages.items():
            if key.startswith("model:"):
                # Records from before the engine was timed: all of a task's time counts as model.
                engine = stages.get("engine:" + key.removeprefix("model:"), value)
                split["tokenise + decode"] += max(value - engine, 0.0)
                engine_total += min(engine, value)
        wait = min(stages.get("input_wait", 0.0), engine_total)
        split["waiting for input"] += wait
        split["model"] += engine_total - wait
    return {key: round(value, 3) for key, value in split.items()}


def build_report(manifest: Manifest, results: list[PartResult], started_at: float | None = None) -> dict[str, Any]:
    """The ``_report.json`` content; ``results`` in unit order, ``started_at`` the run's wall-clock start.

    Without ``started_at`` the start is the commit time less the manifest's wall seconds.
    Parts finished before the start were kept from an interrupted attempt (``--resume``).
    """
    totals = manifest.totals
    if started_at is None:
        committed = datetime.fromisoformat(manifest.committed_at).timestamp()
        started_at = committed - (manifest.wall_seconds or 0.0)
    kept = {r.unit.id for r in results if r.finished_at is None or r.finished_at < started_at}
    ran = sorted((r for r in results if r.unit.id not in kept), key=lambda r: r.finished_at or 0.0)
    rows = kept_rows = sum(r.rows_out for r in results if r.unit.id in kept)
    points = [{"seconds": 0.0, "rows": rows}]
    for result in ran:
        rows += result.rows_out
        points.append({"seconds": round(result.finished_at - started_at, 3), "rows": rows, "unit": result.unit.id})

    tasks: dict[str, Any] = {}
    for name, model in manifest.models.items():
        merged = merge(r.task_stats[name] for r in results if name in r.task_stats)
        entry: dict[str, Any] = {"task": model["task"], "annotated": merged["annotated"]}
        entry.update(TASKS[model["task"]].summary.figures(merged))
        entry["scores"] = {"edges": bin_edges(), "counts": merged["scores"]}
        if name in totals.labelled_by:  # a cascade: the rows each of its models labelled
            entry["labelled_by"] = totals.labelled_by[name]
        tasks[name] = entry

    return {
        "report_version": REPORT_VERSION,
        "run_id": manifest.run_id,
        "batchnlp_version": manifest.batchnlp_version,
        "committed_at": manifest.committed_at,
        "status": "committed",
        "spec": manifest.spec,
        "input": {"format": manifest.input["format"], "files": len(manifest.input["files"])},
        "models": manifest.models,
        "device": manifest.device,
        "precision": manifest.precision,
        "totals": {key: value for key, value in totals.to_record().items() if not key.endswith("examples")},
        "wall_seconds": manifest.wall_seconds,
        "rows_per_second": manifest.rows_per_second,
        "startup": manifest.startup,
        "estimate": estimate_beside_actual(manifest),
        "throughput": {
            "started_at": round(started_at, 3),
            "kept_rows": kept_rows,
            "points": points,
        },
        "units": [
            {
                "unit": r.unit.id,
                "rows": r.rows_out,
                "rejected": r.rejected,
                "seconds": round(r.busy_seconds, 3),
                "worker": r.worker,
                "kept": r.unit.id in kept,
            }
            for r in results
        ],
        "tasks": tasks,
        "rejected": {
            "rows": totals.rejected,
            "by_reason": totals.to_record()["rejected_by_reason"],
            "examples": totals.rejected_examples,
            "bad_lines": totals.bad_lines,
            "bad_line_examples": totals.bad_line_examples,
        },
        "time_split": {"seconds": time_split(results), "note": TIME_SPLIT_NOTE},
    }


def estimate_beside_actual(manifest: Manifest) -> list[dict[str, Any]] | None:
    """The plan's estimate (``batchnlp plan``'s figures, recorded before the run) beside what happened:
    rows, tokens, padded share and wall seconds, each estimate with its 95% interval where it has one."""
    estimate, totals = manifest.estimate, manifest.totals
    if not estimate:
        return None
    padding = totals.shares["padding"]
    rate = estimate.get("tokens_per_second")
    figures = [
        ("rows", estimate.get("rows"), totals.rows_in),
        ("tokens", estimate.get("tokens"), totals.row_tokens),  # the rows' tokens, as the plan counts them
        ("padding share", estimate.get("padding_share"), padding),
        (
            "wall seconds" + (f" at {rate:,.0f} tokens/s" if rate else ""),
            estimate.get("wall_seconds"),
            manifest.wall_seconds,
        ),
    ]
    rows = []
    for name, planned, actual in figures:
        planned = planned if isinstance(planned, dict) else {"estimate": planned}
        rows.append({"figure": name, **planned, "actual": actual})
    return rows


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
header{background:#0d2538;color:#fff;padding:18px 24px}
header h1{margin:0 0 4px;font-size:20px}
header .sub{opacity:.8;font-size:13px}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin-top:12px}
.kpi{background:rgba(255,255,255,.1);border-radius:6px;padding:6px 12px;min-width:110px}
.kpi b{display:block;font-size:18px}
.kpi span{font-size:12px;opacity:.8}
.ok{color:#7ee787}.warn{color:#ffa657}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}
h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;margin:6px 0}
td,th{border-bottom:1px solid #eaeef2;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#57606a}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:320px;border-radius:6px}
.note{color:#57606a;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:18px}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
"""
COLORS = ["#2f81f7", "#3fb950", "#d29922", "#a371f7", "#f85149", "#db61a2", "#39c5cf", "#8b949e"]
HIGHLIGHT = "#f85149"
BAR = "#2f81f7"


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: a header with the headline figures, then one section per topic."""
    sections = [
        ("summary", "Summary", _summary(report)),
        ("models", "Models", _models(report)),
        ("throughput", "Throughput", _throughput(report)),
        ("units", "Units", _units(report)),
        *([("estimate", "Estimate and outcome", _estimate(report))] if report.get("estimate") else []),
        ("labels", "Labels", _labels(report)),
        ("scores", "Scores", _scores(report)),
    ]
    for kind in dict.fromkeys(task["task"] for task in report["tasks"].values()):  # a section of its own
        if (section := TASKS[kind].summary.section) is not None:
            sections.append((kind, section.title, _task_section(report, kind, section)))
    sections += [("rejected", "Rejected rows", _rejected(report)), ("time", "Time split", _time(report))]
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>batchnlp run {esc(report['run_id'])}</title><style>{CSS}</style></head>"
        f"<body>{_header(report)}<main>{body}</main></body></html>\n"
    )


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, int | float) else esc(value)


def _header(report: dict[str, Any]) -> str:
    totals = report["totals"]
    rejected = totals["rejected"]
    kpis = [
        ('<b class="ok">committed</b>', "status"),
        (f"<b>{num(totals['rows_out'])}</b>", "rows out"),
        (f"<b>{num(report['rows_per_second'], 1)}</b>", "rows / s (wall clock)"),
        (f"<b>{num(report['wall_seconds'], 1)} s</b>", "wall time"),
        (f'<b class="{"warn" if rejected else "ok"}">{num(rejected)}</b>', "rejected rows"),
        (f"<b>{num(totals['parts'])}</b>", "parts"),
        (f"<b>{esc(', '.join(report['device']))} · {esc(', '.join(report['precision']))}</b>", "device · precision"),
    ]
    tiles = "".join(f'<div class="kpi">{value}<span>{label}</span></div>' for value, label in kpis)
    return (
        f"<header><h1>batchnlp run {esc(report['run_id'])}</h1>"
        f'<div class="sub">committed {esc(report["committed_at"])} · batchnlp {esc(report["batchnlp_version"])} · '
        f"{esc(report['spec'].get('input', ''))} → {esc(report['spec'].get('output', ''))}</div>"
        f'<div class="kpis">{tiles}</div></header>'
    )


def html_table(
    rows: list[tuple[Any, ...]], head: tuple[str, ...] | None = None, numeric: set[int] | None = None
) -> str:
    numeric = numeric or set()
    header = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{num(c, 3 if isinstance(c, float) else 0)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{header}{body}</table>"


def _summary(report: dict[str, Any]) -> str:
    t, startup, models = report["totals"], report.get("startup") or {}, report["models"].items()
    shares = Totals.from_record(t).shares
    rows = [
        ("input", f"{report['input']['files']} {report['input']['format']} file(s)"),
        ("rows in / out", f"{t['rows_in']:,} / {t['rows_out']:,}"),
        ("rejected rows", f"{t['rejected']:,}"),
        ("bad source lines", f"{t.get('bad_lines', 0):,}"),
        ("parts", f"{t['parts']:,}  ({t['bytes']:,} bytes)"),
        ("tokens (padded)", f"{t['tokens']:,} ({t['padded_tokens']:,}; {shares['padding']:.1%} padding)"),
        (
            "worker time in the model / model time waiting for input",
            f"{shares['model']:.1%} / {shares['input_wait']:.1%}",
        ),
        ("out-of-memory splits", f"{t.get('oom_splits', 0):,}"),
        ("int8 rows rescored in fp32 (near ties)", f"{t.get('rescored', 0):,}"),
        *(
            [("inputs labelled by each model of a cascade", cascade_counts(t["labelled_by"]))]
            if t.get("labelled_by")
            else []
        ),
        *(
            (f"{task}: each distinct input labelled once", Totals.from_record(t).saved(task))
            for task in t.get("dedup", {})
        ),
        ("wall time", f"{num(report['wall_seconds'], 1)} s; {num(report['rows_per_second'], 1)} rows/s"),
        ("models loaded after", f"{num(startup.get('models_loaded_s'), 1)} s"),
        ("first row annotated after", f"{num(startup.get('first_row_s'), 1)} s"),
        ("ONNX export (first run of a model on a machine; 0 when cached)", f"{num(startup.get('onnx_export_s'), 1)} s"),
        ("device / precision", f"{', '.join(report['device'])} / {', '.join(report['precision'])}"),
        ("backend", ", ".join(f"{task}: {'/'.join(m.get('backends') or ['?'])}" for task, m in models)),
    ]
    spec = json.dumps(report["spec"], indent=2, sort_keys=True, ensure_ascii=False)
    return html_table(rows) + f"<h3>Job spec</h3><pre>{esc(spec)}</pre>"


def _estimate(report: dict[str, Any]) -> str:
    def show(row: dict[str, Any], value: Any) -> str:
        share = row["figure"] == "padding share" and isinstance(value, float)
        return f"{value:.1%}" if share else num(value, 1 if isinstance(value, float) else 0)

    rows = [
        (
            row["figure"],
            show(row, row.get("estimate")),
            f"{num(row['low'])} – {num(row['high'])}" if "low" in row else "–",
            show(row, row["actual"]),
        )
        for row in report["estimate"]
    ]
    note = '<p class="note">Estimated by the plan before the run (batchnlp plan), from a sample of rows.</p>'
    return note + html_table(rows, ("figure", "estimate", "95% interval", "actual"))


def _models(report: dict[str, Any]) -> str:
    rows = []
    for name, model in report["models"].items():
        weights = model.get("weights") or {}
        files = "; ".join(f"{file} sha256:{digest[:12]}…" for file, digest in sorted(weights.items())) or "–"
        rows.append((name, model["task"], model["ref"], model.get("version") or "–", files))
        student = model.get("student")
        if student:  # a cascade: the model that labels first
            files = "; ".join(
                f"{file} sha256:{digest[:12]}…" for file, digest in sorted((student.get("weights") or {}).items())
            )
            what = f"{model['task']}: cascade's student, margin {student.get('margin')}"
            rows.append((name, what, student["ref"], student.get("version") or "–", files or "–"))
    return html_table(rows, ("task name", "kind", "model", "version / revision", "weights"))


def cascade_counts(labelled_by: dict[str, dict[str, int]]) -> str:
    """Rows per model of each cascade, with the teacher's share: ``sentiment: student 900, teacher 100 (10.0% …)``."""
    described = []
    for task, counts in labelled_by.items():
        rows = sum(counts.values())
        share = f" ({counts.get('teacher', 0) / rows:.1%} by the teacher)" if rows else ""
        described.append(f"{task}: " + ", ".join(f"{model} {n:,}" for model, n in counts.items()) + share)
    return "; ".join(described)


def _throughput(report: dict[str, Any]) -> str:
    points = report["throughput"]["points"]
    note = ""
    if report["throughput"]["kept_rows"]:
        kept = report["throughput"]["kept_rows"]
        note = f'<p class="note">{kept:,} rows were kept from an earlier attempt (at 0 s).</p>'
    if len(points) < 2:
        return note + '<p class="note">No units ran in this attempt.</p>'
    xs = [p["seconds"] for p in points]
    ys = [p["rows"] for p in points]
    return (
        "<p>Rows written over time (each point is a finished unit).</p>"
        + _line_chart(xs, ys, "seconds since start", "rows written")
        + note
    )


def _units(report: dict[str, Any]) -> str:
    units = report["units"]
    if not units:
        return '<p class="note">No units.</p>'
    slowest = sorted(range(len(units)), key=lambda i: -units[i]["seconds"])[:SLOWEST]
    median = statistics.median(u["seconds"] for u in units)
    # Highlight units well above the median: the stragglers that stretch a run's tail. None, when
    # no unit is (the slowest used to be marked anyway).
    highlight = {i for i in slowest if units[i]["seconds"] > 1.5 * median}
    chart = _column_chart(
        [u["unit"].removeprefix("part-") for u in units],
        [u["seconds"] for u in units],
        highlight,
        "seconds",
    )
    rows = [
        (units[i]["unit"], units[i]["seconds"], units[i]["rows"], units[i]["rejected"], units[i]["worker"])
        for i in slowest
    ]
    return (
        f"<p>Duration of each unit on its worker (read, annotate, write), in input order; median {median:.2f} s, "
        f'<span style="color:{HIGHLIGHT}">red</span>: over 1.5× the median among the {SLOWEST} slowest.</p>'
        + chart
        + "<h3>Slowest units</h3>"
        + html_table(rows, ("unit", "seconds", "rows", "rejected", "worker"), {1, 2, 3})
    )


def _labels(report: dict[str, Any]) -> str:
    parts = []
    for name, task in report["tasks"].items():
        if "labels" not in task:
            continue
        labels = list(task["labels"].items())
        if len(labels) > MAX_LABELS:
            other = sum(count for _, count in labels[MAX_LABELS - 1 :])
            labels = [*labels[: MAX_LABELS - 1], ("(other)", other)]
        parts.append(
            f'<div><h3>{esc(name)} <span class="note">({task["annotated"]:,} rows annotated)</span></h3>'
            + (_hbar_chart(labels, task["annotated"]) if labels else '<p class="note">no rows annotated</p>')
            + "</div>"
        )
    return (
        '<div class="grid">' + "".join(parts) + "</div>" if parts else '<p class="note">No classification task ran.</p>'
    )


def _scores(report: dict[str, Any]) -> str:
    parts = []
    for name, task in report["tasks"].items():
        edges, counts = task["scores"]["edges"], task["scores"]["counts"]
        ticks = [f"{edges[i]:.1f}" for i in range(len(counts))]
        parts.append(
            f"<div><h3>{esc(name)}</h3>{_column_chart(ticks, counts, set(), 'rows', width=360, every=1)}</div>"
        )
    return (
        '<p class="note">Score of each annotated row, in ten bins over [0, 1], each labelled by its lower edge.</p>'
        + '<div class="grid">'
        + "".join(parts)
        + "</div>"
    )


def _task_section(report: dict[str, Any], kind: str, section: ReportSection) -> str:
    """One row per task of ``kind``: its figures as the task's summary names them."""
    rows = [
        (name, *(_rate(task[key]) if key.endswith("_rate") else task[key] for key, _ in section.columns))
        for name, task in report["tasks"].items()
        if task["task"] == kind
    ]
    numeric = {i + 1 for i, (key, _) in enumerate(section.columns) if not key.endswith("_rate")}
    return f"<p>{esc(section.note)}</p>" + html_table(
        rows, ("task", *(heading for _, heading in section.columns)), numeric
    )


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _rejected(report: dict[str, Any]) -> str:
    rejected = report["rejected"]
    if not rejected["rows"] and not rejected["bad_lines"]:
        return "<p>No rows were rejected.</p>"
    out = f"<p>{rejected['rows']:,} rows kept with null task columns and a reason in <code>_error</code>.</p>"
    out += html_table(sorted(rejected["by_reason"].items(), key=lambda item: -item[1]), ("reason", "rows"), {1})
    if rejected["examples"]:
        examples = [
            (e.get("part"), e.get("row"), "" if e.get("id") is None else e["id"], e.get("reason"))
            for e in rejected["examples"]
        ]
        out += "<h3>Examples</h3>" + html_table(examples, ("part", "row in part", "id", "reason"))
    if rejected["bad_lines"]:
        out += f"<h3>Bad source lines: {rejected['bad_lines']:,}</h3>"
        lines = [(e.get("source"), e.get("line"), e.get("reason")) for e in rejected["bad_line_examples"]]
        out += html_table(lines, ("source", "line", "reason"))
    return out


def _time(report: dict[str, Any]) -> str:
    split = report["time_split"]["seconds"]
    total = sum(split.values())
    if not total:
        return '<p class="note">No worker time recorded.</p>'
    x, bar = 0.0, []
    width = 900
    for i, (key, value) in enumerate(split.items()):
        w = value / total * width
        bar.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="26" fill="{COLORS[i]}"><title>{esc(key)}</title></rect>'
        )
        x += w
    legend = [
        (f'<span style="color:{COLORS[i]}">■</span> {esc(key)}', value, f"{value / total:.1%}")
        for i, (key, value) in enumerate(split.items())
    ]
    table = "<table><tr><th>activity</th><th>seconds</th><th>share</th></tr>" + "".join(
        f'<tr><td>{label}</td><td class="n">{value:,.2f}</td><td class="n">{share}</td></tr>'
        for label, value, share in legend
    )
    table += f'<tr><th>total</th><td class="n">{total:,.2f}</td><td></td></tr></table>'
    svg = f'<svg width="{width}" height="26" role="img" aria-label="time split">{"".join(bar)}</svg>'
    return svg + table + f'<p class="note">{esc(report["time_split"]["note"])}</p>'


# ---------------------------------------------------------------- charts (inline SVG)


def _nice(value: float) -> float:
    """A round axis maximum at or above ``value``: four round steps (1, 2, 2.5, 3, 4, 5, 6, 8 × 10ⁿ)."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    magnitude = 10 ** math.floor(math.log10(quarter))
    step = next(s * magnitude for s in (1, 2, 2.5, 3, 4, 5, 6, 8, 10) if quarter <= s * magnitude * (1 + 1e-9))
    return step * 4


def _axes(x0: int, y0: int, w: int, h: int, top: float, ylabel: str) -> str:
    lines = []
    for i in range(5):
        y = y0 + h - h * i / 4
        lines.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        lines.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_short(top * i / 4)}</text>')
    lines.append(f'<text x="{x0}" y="{y0 - 8}" text-anchor="start">{esc(ylabel)}</text>')
    lines.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y0 + h}" y2="{y0 + h}" stroke="#8c959f"/>')
    return "".join(lines)


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{round(value, 6):g}"


def _line_chart(xs: list[float], ys: list[float], xlabel: str, ylabel: str) -> str:
    x0, y0, w, h = 60, 24, 860, 240
    xmax, ymax = _nice(max(xs) or 1.0), _nice(max(ys) or 1.0)
    px = [x0 + w * x / xmax for x in xs]
    py = [y0 + h - h * y / ymax for y in ys]
    path = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
    dots = "".join(
        f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{BAR}"><title>{x:.1f} s: {y:,} rows</title></circle>'
        for a, b, x, y in zip(px, py, xs, ys, strict=True)
    )
    ticks = "".join(
        f'<text x="{x0 + w * i / 4:.1f}" y="{y0 + h + 16}" text-anchor="middle">{_short(xmax * i / 4)}</text>'
        for i in range(5)
    )
    label = f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle">{esc(xlabel)}</text>'
    return (
        f'<svg width="{x0 + w + 20}" height="{y0 + h + 44}" role="img" aria-label="{esc(ylabel)} over time">'
        f"{_axes(x0, y0, w, h, ymax, ylabel)}"
        f'<polyline points="{path}" fill="none" stroke="{BAR}" stroke-width="2"/>{dots}{ticks}{label}</svg>'
    )


def _column_chart(
    labels: list[str], values: list[float], highlight: set[int], ylabel: str, width: int = 860, every: int = 0
) -> str:
    """Vertical bars in order; ``every`` labels every n-th bar (0: about twenty labels)."""
    x0, y0, h = 56, 24, 200
    w = width
    top = _nice(max(values, default=0) or 1.0)
    slot = w / max(len(values), 1)
    gap = min(slot * 0.2, 4)
    every = every or max(1, round(len(values) / 20))
    bars, ticks = [], []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        bh = h * value / top
        color = HIGHLIGHT if i in highlight else BAR
        bars.append(
            f'<rect x="{x0 + i * slot + gap / 2:.1f}" y="{y0 + h - bh:.1f}" width="{max(slot - gap, 0.5):.1f}" '
            f'height="{bh:.1f}" fill="{color}"><title>{esc(label)}: {value:,}</title></rect>'
        )
        if i % every == 0:
            ticks.append(
                f'<text x="{x0 + (i + 0.5) * slot:.1f}" y="{y0 + h + 14}" text-anchor="middle">{esc(label)}</text>'
            )
    return (
        f'<svg width="{x0 + w + 10}" height="{y0 + h + 24}" role="img" aria-label="{esc(ylabel)}">'
        f"{_axes(x0, y0, w, h, top, ylabel)}{''.join(bars)}{''.join(ticks)}</svg>"
    )


def _hbar_chart(items: list[tuple[str, int]], total: int) -> str:
    """Horizontal bars, one per label, with its count and share."""
    label_w, bar_w, row = 150, 260, 20
    top = max((count for _, count in items), default=1) or 1
    rows = []
    for i, (label, count) in enumerate(items):
        y = i * row
        shown = label if len(label) <= 22 else label[:21] + "…"
        share = f"{count / total:.1%}" if total else ""
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{esc(shown)}<title>{esc(label)}</title></text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w * count / top:.1f}" height="{row - 6}" '
            f'fill="{COLORS[i % len(COLORS)]}"/>'
            f'<text x="{label_w + bar_w * count / top + 6:.1f}" y="{y + 14}">{count:,} ({share})</text>'
        )
    return f'<svg width="{label_w + bar_w + 110}" height="{len(items) * row + 4}" role="img">{"".join(rows)}</svg>'
