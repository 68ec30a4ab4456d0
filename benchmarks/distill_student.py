"""``batchnlp distill`` end to end: a teacher labels a corpus with ``--keep-probs``, a student learns
from the output, and the student's report says what it bought (docs/distill.md's figures).

    python benchmarks/distill_student.py                          # 4,000 rows, DistilBERT-base teacher, 3 layers
    python benchmarks/distill_student.py --rows 1000 --size tiny  # a quick look

The corpus recombines the sentences of ``examples/reviews.jsonl`` (hand-written English reviews)
into ``--rows`` reviews of 1 to 3 sentences. There is no trained checkpoint offline, so the teacher
is a random DistilBERT whose head splits the corpus along the main direction of its [CLS]
features (:func:`batchnlp.testing.build_separating_classifier`): its labels are a fixed function of
the text that the student has to learn, not sentiment. Both steps run as the CLI, each its own
process; the teacher/student speeds are those ``batchnlp distill`` measures in one process on the
same held-out rows. Prints the CPU's vector flags beside the figures: they move with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchnlp.testing import build_separating_classifier

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def write_corpus(path: Path, rows: int, seed: int = 0) -> list[str]:
    """``rows`` reviews of 1 to 3 sentences drawn from examples/reviews.jsonl; returns their texts."""
    reviews = [json.loads(line) for line in (ROOT / "examples" / "reviews.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in reviews if isinstance(r.get("text"), str) and r["text"].strip()]
    sentences = [s for text in texts for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    rng = random.Random(seed)
    made = [" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3))) for _ in range(rows)]
    with path.open("w") as handle:
        for i, text in enumerate(made):
            handle.write(json.dumps({"id": f"r{i:05d}", "text": text}) + "\n")
    return made


def cpu_flags() -> str:
    found = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            found = set(line.split(":", 1)[1].split())
            break
    return " ".join(flag for flag in FLAGS if flag in found) or "none of " + ", ".join(FLAGS)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def distill_arguments(parser: argparse.ArgumentParser, rows_help: str | None = None) -> None:
    """The teacher, corpus and training settings this benchmark and ``cascade.py`` share."""
    parser.add_argument("--rows", type=int, default=4000, help=rows_help)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--layers", type=int, default=3, help="student layers (the teacher has 6)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--max-length", default="64")
    parser.add_argument("--device", default="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    distill_arguments(parser)
    parser.add_argument("--work", type=Path, help="keep the corpus, output and models here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        texts = write_corpus(work / "corpus.jsonl", args.rows)
        teacher = build_separating_classifier(work / "teacher", texts, size=args.size, layers=6)
        batchnlp = [sys.executable, "-m", "batchnlp"]
        label_seconds = timed([
            *batchnlp, "run", str(work / "corpus.jsonl"), str(work / "labelled"), "--overwrite", "--quiet",
            "--task", "classify", "--model", f"classify={teacher}", "--keep-probs", "--id-column", "id",
            "--device", args.device,
        ])  # fmt: skip
        distill_seconds = timed([
            *batchnlp, "distill", str(work / "labelled"), str(work / "student"), "--overwrite", "--quiet",
            "--layers", str(args.layers), "--epochs", str(args.epochs), "--lr", args.lr,
            "--max-length", args.max_length, "--device", args.device,
        ])  # fmt: skip
        report = json.loads((work / "student" / "_distill_report.json").read_text())

    data, held, fast = report["data"], report["eval"], report["speed"]
    teacher_size, student_size = report["teacher"]["size"], report["student"]["size"]
    labels = {label: figures["support"] for label, figures in held["per_label"].items()}
    print(f"machine: {args.device}, CPU flags: {cpu_flags()}")
    print(f"corpus: {data['rows']:,} rows ({data['train_rows']:,} train, {data['eval_rows']:,} held out: {labels})")
    print(f"labelling with the teacher: {label_seconds:.1f} s; distill (train, measure, report): "
          f"{distill_seconds:.1f} s")  # fmt: skip
    print(f"training: {report['training']['seconds']:.1f} s for {args.epochs} epoch(s), {fast['precision']}")
    print(f"| | teacher ({report['teacher']['layers']} layers) | student ({report['student']['layers']} layers, "
          f"from {report['student']['init'].get('teacher_layers')}) |")  # fmt: skip
    print("|---|---|---|")
    print(f"| parameters | {teacher_size['parameters'] / 1e6:.1f} M ({teacher_size['bytes'] / 1e6:.0f} MB) | "
          f"{student_size['parameters'] / 1e6:.1f} M ({student_size['bytes'] / 1e6:.0f} MB) |")  # fmt: skip
    print(f"| tokens/s, same {fast['rows']:,} held-out rows, same process | {fast['teacher_tokens_per_second']:,.0f} | "
          f"{fast['student_tokens_per_second']:,.0f} ({fast['speedup']}×) |")  # fmt: skip
    print(f"| agreement with the teacher's labels (held out) | — | {held['agreement']:.1%} "
          f"(majority baseline {held['majority_baseline']:.1%}) |")  # fmt: skip
    print(f"| macro-F1 against the teacher's labels | — | {held['macro_f1']:.3f} |")


if __name__ == "__main__":
    main()
