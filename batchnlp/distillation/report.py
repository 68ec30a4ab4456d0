"""What a distilled student bought: agreement with its teacher, speed, size; as JSON, HTML and a model card.

Both models are measured here, in one process, on the same held-out rows, through the code
``batchnlp run`` labels with (the classify task on batchnlp's :class:`~batchnlp.inference.engine.Engine`:
same tokeniser settings, token-budget batches, device and precision), so the speed-up is the one
a night's labelling would see on this machine, and the student's labels are the ones it would write.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchnlp.ledger.report import CSS, esc, html_table, num

REPORT_JSON = "_distill_report.json"
REPORT_HTML = "_distill_report.html"
MODEL_CARD = "README.md"
WARMUP_ROWS = 8  # rows run once before a model is timed: its first batch pays for lazy initialisation


@dataclass(frozen=True)
class Measured:
    """One model's labels for the held-out rows, how sure it was, and how fast it gave them."""

    labels: list[str]
    tokens: int
    seconds: float
    device: str
    precision: str
    gaps: np.ndarray | None = None  # each row's best score less its second best: what a cascade's margin compares

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def measure(
    task: tuple[str, str], directory: Path, ref: str, texts: list[str], device: str, precision: str
) -> Measured:
    """Label ``texts`` with the checkpoint at ``directory`` as ``batchnlp run`` would (``task``: name, kind)."""
    from batchnlp.inference.engine import Engine
    from batchnlp.spec import TaskSpec
    from batchnlp.tasks.classify import Classify, best_two_gap
    from batchnlp.tasks.columns import PROBS

    engine = Engine(device, precision)
    spec = TaskSpec(name=task[0], kind=task[1], model=ref, keep_probs=True)
    classifier = Classify(spec, directory, engine, None)
    classifier.annotate(texts[:WARMUP_ROWS])
    clock = time.perf_counter()
    column, stats = classifier.annotate(texts)
    seconds = time.perf_counter() - clock
    labels = column.field("label").to_pylist()
    probs = column.field(PROBS).flatten().to_numpy().reshape(len(texts), len(classifier.labels))
    gaps = best_two_gap(probs) if len(classifier.labels) > 1 else np.ones(len(texts), dtype=np.float32)
    return Measured(labels, stats.tokens, seconds, engine.device, engine.precision, gaps)


def agreement(predicted: list[str], reference: list[str], labels: list[str], majority: str) -> dict[str, Any]:
    """Agreement with the teacher's labels, macro-F1 against them (over the labels either side uses),
    per-label precision/recall/F1, and the agreement of always answering the training split's majority label."""
    pred, ref = np.asarray(predicted, dtype=object), np.asarray(reference, dtype=object)
    per_label = {}
    for label in labels:
        tp = int(np.sum((pred == label) & (ref == label)))
        predicted_n, support = int(np.sum(pred == label)), int(np.sum(ref == label))
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "predicted": predicted_n,
        }
    used = [label for label, figures in per_label.items() if figures["support"] or figures["predicted"]]
    return {
        "rows": len(ref),
        "agreement": float(np.mean(pred == ref)) if len(ref) else None,
        "macro_f1": float(np.mean([per_label[label]["f1"] for label in used])) if used else None,
        "majority_label": majority,
        "majority_baseline": float(np.mean(ref == majority)) if len(ref) else None,
        "per_label": per_label,
    }


def checkpoint_size(directory: Path) -> dict[str, int]:
    """Parameters (from the safetensors headers, nothing loaded) and bytes of a checkpoint's weights."""
    from safetensors import safe_open

    parameters = size = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        size += path.stat().st_size
        with safe_open(str(path), "np") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is no mapping
                parameters += int(np.prod(weights.get_slice(key).get_shape()))
    return {"parameters": parameters, "bytes": size}


def speed(teacher: Measured, student: Measured, rows: int) -> dict[str, Any]:
    """Both models' throughput on the same rows, and the ratio."""
    return {
        "rows": rows,
        "tokens": student.tokens,
        "device": student.device,
        "precision": student.precision,
        "teacher_seconds": round(teacher.seconds, 3),
        "student_seconds": round(student.seconds, 3),
        "teacher_tokens_per_second": round(teacher.tokens_per_second, 1),
        "student_tokens_per_second": round(student.tokens_per_second, 1),
        "speedup": round(student.tokens_per_second / teacher.tokens_per_second, 2)
        if teacher.tokens_per_second
        else None,
    }


def write_report(directory: Path, report: dict[str, Any]) -> None:
    """``_distill_report.json``, ``_distill_report.html`` and the model card, beside the weights."""
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (directory / REPORT_HTML).write_text(render_html(report), encoding="utf-8")
    (directory / MODEL_CARD).write_text(model_card(report), encoding="utf-8")


def _headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures every view leads with: agreement, baseline, macro-F1, speed-up, size."""
    held, fast = report["eval"], report["speed"]
    teacher, student = report["teacher"]["size"], report["student"]["size"]
    ratio = student["parameters"] / teacher["parameters"] if teacher["parameters"] else 0.0
    return [
        (f"{held['agreement']:.1%}", "agreement with the teacher (held out)"),
        (f"{held['majority_baseline']:.1%}", f"majority-label baseline ({held['majority_label']})"),
        (f"{held['macro_f1']:.3f}", "macro-F1 vs the teacher's labels"),
        (f"{fast['speedup']}×", f"tokens/s vs the teacher ({fast['device']} · {fast['precision']})"),
        (f"{ratio:.0%}", "of the teacher's parameters"),
    ]


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page in the run report's style: headline figures, then the tables behind them."""
    tiles = "".join(
        f'<div class="kpi"><b>{esc(value)}</b><span>{esc(label)}</span></div>' for value, label in _headline(report)
    )
    held, fast, data, training = report["eval"], report["speed"], report["data"], report["training"]
    models = html_table(
        [
            (role, m["model"], m.get("layers"), m["size"]["parameters"], m["size"]["bytes"], tps)
            for role, m, tps in (
                ("teacher", report["teacher"], fast["teacher_tokens_per_second"]),
                ("student", report["student"], fast["student_tokens_per_second"]),
            )
        ],
        ("", "model", "layers", "parameters", "bytes", "tokens / s"),
        {2, 3, 4, 5},
    )
    labels = html_table(
        [
            (label, f["support"], f["predicted"], f["precision"], f["recall"], f["f1"])
            for label, f in held["per_label"].items()
        ],
        ("label", "teacher rows", "student rows", "precision", "recall", "F1"),
        {1, 2, 3, 4, 5},
    )
    setup = html_table(
        [
            ("teacher output", f"{data['source']} (runs {', '.join(data['runs'])})"),
            ("task", f"{data['task']}: {', '.join(data['labels'])}"),
            ("rows", f"{data['train_rows']:,} training, {data['eval_rows']:,} held out ({data['split']})"),
            ("student start", json.dumps(report["student"]["init"])),
            (
                "loss",
                f"{training['alpha']} · T² · KL + {1 - training['alpha']:.2f} · CE, T = {training['temperature']}",
            ),
            ("epochs", ", ".join(f"{e['epoch']}: loss {e['loss']:.4f}" for e in training["epochs"])),
            (
                "training",
                f"{training['device']} · {training['precision']}, {training['seconds']:.1f} s, seed {training['seed']}",
            ),
            ("speed measured on", f"{fast['rows']:,} held-out rows, {fast['tokens']:,} tokens"),
        ]
    )
    sections = [
        ("Models", models),
        ("Agreement per label", labels),
        ("Cascade: the student first, the teacher for its close calls", _cascade_section(report)),
        ("How it was made", setup),
    ]
    body = "".join(f"<section><h2>{title}</h2>{content}</section>" for title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>batchnlp distill {esc(report['student']['model'])}</title><style>{CSS}</style></head>"
        f"<body><header><h1>batchnlp distill → {esc(report['student']['model'])}</h1>"
        f'<div class="sub">{esc(report["created_at"])} · batchnlp {esc(report["batchnlp_version"])} · '
        f"teacher {esc(report['teacher']['model'])}</div>"
        f'<div class="kpis">{tiles}</div></header><main>{body}</main></body></html>\n'
    )


def cascade_advice(report: dict[str, Any]) -> str:
    """What the calibration recommends, in a sentence: the margin, what it costs and keeps, the command."""
    cascade = report.get("cascade")
    if not cascade:
        return ""
    target = f"{cascade['target_agreement']:.1%}"
    if cascade["margin"] is None:
        return (
            f"No cascade margin below 1 keeps {target} of the teacher's labels on the held-out rows: the student "
            "disagrees with the teacher on rows it is sure of. Train it longer, or keep the teacher."
        )
    return (
        f"Cascade: the smallest margin that keeps {target} of the teacher's labels on the held-out rows is "
        f"{cascade['margin']:g} (the teacher labels {cascade['teacher_share']:.1%} of the rows; agreement "
        f"{cascade['agreement']:.2%}): {cascade['command']}"
    )


def _cascade_section(report: dict[str, Any]) -> str:
    cascade = report.get("cascade")
    if not cascade:
        return '<p class="note">Not calibrated.</p>'
    rows = [
        (
            f"{row['margin']:g}" + (" ◀" if row["margin"] == cascade["margin"] else ""),
            row["teacher_rows"],
            f"{row['teacher_share']:.1%}",
            f"{row['agreement']:.2%}",
        )
        for row in cascade["margins"]
    ]
    note = (
        "<p>A cascade (batchnlp run --cascade TASK=STUDENT --cascade-margin M) lets the student label every row and "
        "hands its teacher the rows whose best two student scores are closer than M. On the held-out rows: the rows "
        "the teacher would label, and the cascade's agreement with the teacher's labels.</p>"
        f"<p>{esc(cascade_advice(report))}</p>"
    )
    return note + html_table(rows, ("margin", "teacher rows", "teacher share", "agreement"), {1})


def model_card(report: dict[str, Any]) -> str:
    """The student's README.md: what it is, what it learnt from, and what it was measured to do."""
    data, fast = report["data"], report["speed"]
    figures = "\n".join(f"| {label} | {value} |" for value, label in _headline(report))
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [batchnlp, distillation]
---

# {data["task"]} student, distilled by batchnlp

A {report["student"].get("layers")}-layer student of `{report["teacher"]["model"]}` for the labels
{", ".join(f"`{label}`" for label in data["labels"])}, trained by `batchnlp distill` on the teacher's
own probabilities (knowledge distillation: temperature {report["training"]["temperature"]}, alpha
{report["training"]["alpha"]}).

- **Data**: {data["train_rows"]:,} rows of `{data["source"]}` (task `{data["task"]}`, batchnlp run
  {", ".join(f"`{run}`" for run in data["runs"])}), text column `{data["text_column"]}`; its labels are the
  teacher's, not human ones.
- **Held out**: {data["eval_rows"]:,} rows ({data["split"]}).
- **Start**: {json.dumps(report["student"]["init"])}.

| measured on the held-out rows | |
|---|---|
{figures}

Speed: {num(fast["teacher_tokens_per_second"])} → {num(fast["student_tokens_per_second"])} tokens/s on
{fast["device"]} ({fast["precision"]}), same rows and batching. Agreement is with the teacher, so it bounds
what the student can be trusted for: it is as good as the teacher at best. Details: `{REPORT_JSON}`.

Label with it: `batchnlp run INPUT OUTPUT --task {report["data"]["kind"]} --model {report["data"]["kind"]}=THIS_DIR`
{_cascade_card(report)}"""


def _cascade_card(report: dict[str, Any]) -> str:
    """The model card's cascade section: the calibration table and the recommended command."""
    cascade = report.get("cascade")
    if not cascade:
        return ""
    table = "\n".join(
        f"| {row['margin']:g} | {row['teacher_share']:.1%} | {row['agreement']:.2%} |" for row in cascade["margins"]
    )
    return f"""
## Cascade with the teacher

{cascade_advice(report)}

| margin | rows the teacher labels | agreement with the teacher (held out) |
|---|---|---|
{table}
"""
