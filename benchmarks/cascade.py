"""A cascade against its teacher alone, whole process: ``batchnlp run --cascade TASK=STUDENT`` with the
margin ``batchnlp distill`` calibrated, against ``batchnlp run`` with the teacher (docs/distill.md's figures).

    python benchmarks/distill_student.py --work /tmp/distill   # the distill benchmark's teacher and student
    python benchmarks/cascade.py --work /tmp/distill           # they, against each other (reused, not rebuilt)
    python benchmarks/cascade.py                               # both steps in one (4,000 rows, DistilBERT-base)
    python benchmarks/cascade.py --rows 1000 --eval-rows 500 --size tiny   # a quick look

The first half is ``benchmarks/distill_student.py``'s: a random DistilBERT teacher whose head splits
the corpus (:func:`batchnlp.testing.build_separating_classifier`) labels ``--rows`` reviews with
``--keep-probs`` and ``batchnlp distill`` trains a ``--layers`` student on them, calibrating the
cascade on its held-out split. Then ``--eval-rows`` fresh reviews, recombined with another seed and
none of whose texts is among the training corpus's, are labelled by the teacher alone, by the cascade
at the calibrated margin, and by the student alone, each a fresh ``batchnlp run`` process writing a
fresh output, the three in turn ``--repeats`` times. Prints the median wall time of each (start-up
included), the
cascade's and the student's agreement with the teacher alone, the rows the teacher labelled in the
cascade (its manifest's count), and the CPU's vector flags: they move with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill_student import distill_arguments, write_corpus

from batchnlp.testing import build_separating_classifier

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def cpu_flags() -> str:
    found: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            found = set(line.split(":", 1)[1].split())
            break
    return " ".join(flag for flag in FLAGS if flag in found) or "none of " + ", ".join(FLAGS)


def fresh_rows(path: Path, rows: int, exclude: set[str], seed: int = 1) -> int:
    """``rows`` distinct reviews recombined with ``seed``, none of whose texts is in ``exclude``; returns how many."""
    scratch = path.with_suffix(".all.jsonl")
    made: list[str] = []
    factor = 2
    while len(made) < rows:
        texts = write_corpus(scratch, rows * factor, seed)
        made = list(dict.fromkeys(text for text in texts if text not in exclude))[:rows]
        factor *= 2
    scratch.unlink()
    with path.open("w") as handle:
        for i, text in enumerate(made):
            handle.write(json.dumps({"id": f"e{i:05d}", "text": text}) + "\n")
    return len(made)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def labels(out: Path, task: str) -> dict[str, str]:
    import pyarrow.dataset as ds

    table = ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table(columns=["id", task])
    return {row["id"]: row[task]["label"] for row in table.to_pylist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    distill_arguments(parser, "training corpus (the distill split holds out 10%%)")
    parser.add_argument("--eval-rows", type=int, default=2000, help="fresh rows the three runs label")
    parser.add_argument("--margin", type=float, help="the cascade's margin (default: the one distill calibrated)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, in turn; the median is shown")
    parser.add_argument("--work", type=Path, help="keep the corpus, outputs and models here (default: a temp dir)")
    args = parser.parse_args()

    batchnlp = [sys.executable, "-m", "batchnlp"]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        student = work / "student"
        if not (student / "_distill_report.json").exists():  # --work kept from an earlier run: reuse its student
            texts = write_corpus(work / "corpus.jsonl", args.rows)
            teacher = build_separating_classifier(work / "teacher", texts, size=args.size, layers=6)
            subprocess.run([
                *batchnlp, "run", str(work / "corpus.jsonl"), str(work / "labelled"), "--overwrite", "--quiet",
                "--task", "classify", "--model", f"classify={teacher}", "--keep-probs", "--id-column", "id",
                "--device", args.device,
            ], check=True)  # fmt: skip
            subprocess.run([
                *batchnlp, "distill", str(work / "labelled"), str(student), "--overwrite", "--quiet",
                "--layers", str(args.layers), "--epochs", str(args.epochs), "--lr", args.lr,
                "--max-length", args.max_length, "--device", args.device,
            ], check=True)  # fmt: skip
        report = json.loads((student / "_distill_report.json").read_text())
        calibrated = report["cascade"]
        margin = args.margin if args.margin is not None else calibrated["margin"]
        if margin is None:
            sys.exit(f"distill found no margin that keeps 99.5% of the teacher's labels: {calibrated['margins']}")
        training = {json.loads(line)["text"] for line in (work / "corpus.jsonl").read_text().splitlines()}
        rows = fresh_rows(work / "eval.jsonl", args.eval_rows, training)
        teacher = work / "teacher"
        common = ["--task", "classify", "--id-column", "id", "--device", args.device, "--quiet"]
        runs = {
            "teacher alone": ["--model", f"classify={teacher}"],
            f"cascade, margin {margin:g}": [
                "--model",
                f"classify={teacher}",
                "--cascade",
                f"classify={student}",
                "--cascade-margin",
                str(margin),
            ],
            "student alone": ["--model", f"classify={student}"],
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        found = {}
        for _ in range(args.repeats):
            for n, (name, flags) in enumerate(runs.items()):
                out = work / f"out-{n}"
                command = [*batchnlp, "run", str(work / "eval.jsonl"), str(out), "--overwrite", *common, *flags]
                times[name].append(round(timed(command), 1))
                found[name] = labels(out, "classify")
                manifest = json.loads((out / "_manifest.json").read_text())
                if "cascade" in name:
                    by_model = manifest["totals"]["labelled_by"]["classify"]
                tokens = manifest["totals"]["tokens"]
        seconds = {name: statistics.median(values) for name, values in times.items()}

    reference = found["teacher alone"]
    print(
        f"machine: {args.device}, {args.size} teacher (6 layers), {args.layers}-layer student; CPU flags: {cpu_flags()}"
    )
    print(
        f"calibrated by distill on {calibrated['rows']:,} held-out rows: margin {calibrated['margin']} "
        f"(teacher share {calibrated['teacher_share']:.1%}, agreement {calibrated['agreement']:.2%}, "
        f"{calibrated['precision']})"
    )
    print(f"timed on {rows:,} fresh rows ({tokens:,} tokens), none in the training corpus; whole process each, "
          f"median of {args.repeats}: {times}")  # fmt: skip
    print("| run | wall s | vs teacher alone | agreement with the teacher alone | rows the teacher labelled |")
    print("|---|---|---|---|---|")
    for name in runs:
        agree = sum(found[name][key] == label for key, label in reference.items()) / len(reference)
        teacher_rows = rows if name == "teacher alone" else by_model["teacher"] if "cascade" in name else 0
        print(
            f"| {name} | {seconds[name]:.1f} | {seconds[name] / seconds['teacher alone']:.2f}× | {agree:.2%} | "
            f"{teacher_rows:,} ({teacher_rows / rows:.1%}) |"
        )


if __name__ == "__main__":
    main()
