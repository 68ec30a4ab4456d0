"""``batchnlp run --task zero-shot`` against the script a user writes without batchnlp: a loop of
``pipeline("zero-shot-classification")`` over the texts, then Parquet. Prints figures, asserts nothing.

    python benchmarks/zero_shot.py --rows 1000 --size base --int8 --repeats 2

Each side is its own process, timed from start to the written output, as a scheduler runs it:
the naive script (the pipeline's default batch of one pair, ``--batch-size`` to change it) and
``batchnlp run --no-dedup`` (every row labelled, as the naive script does; the corpus has no
repeated text anyway), fp32, and with ``--int8`` also int8 (its near ties rescored in fp32). The
model is a random-weight DistilBERT NLI classifier (contradiction, neutral, entailment) of the
chosen size with the real bert-base-uncased vocabulary: speed does not depend on the weights.
The best labels of both sides are compared too (fp32: they should all agree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from against_peers import cpu_flags

from batchnlp.testing import build_nli_classifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAIVE = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from transformers import pipeline

corpus, model, out, labels, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
rows = [json.loads(line) for line in open(corpus)]
classifier = pipeline("zero-shot-classification", model=model, device="cpu")
results = [classifier(row["text"], candidate_labels=labels, batch_size=batch) for row in rows]
pq.write_table(pa.Table.from_pylist([{**row, "labels": r["labels"], "scores": r["scores"]}
                                     for row, r in zip(rows, results)]), out)
"""


LOADS: list[str] = []  # the 1-minute load average after each side: other work on the machine slows both


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    LOADS.append(f"{os.getloadavg()[0]:.1f}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--labels", default="price,quality,delivery,customer service")
    parser.add_argument("--batch-size", type=int, default=1, help="the naive pipeline's batch (pairs)")
    parser.add_argument("--int8", action="store_true", help="also batchnlp at int8")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every side, alternating")
    args = parser.parse_args()
    from tests.support.corpus import texts

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_nli_classifier(work / "nli", size=args.size)
        rows = texts(args.rows, seed=31, max_sentences=4)
        corpus = work / "reviews.jsonl"
        corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(rows)))
        labels = args.labels.split(",")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        hypotheses = [f"This example is {label}." for label in labels]
        pairs = tokenizer([t for t in rows for _ in labels], hypotheses * len(rows), truncation="only_first")
        tokens = sum(map(len, pairs["input_ids"]))
        agreement: dict[str, float] = {}
        rescored: dict[str, int] = {}

        figures: dict[str, list[float]] = {}
        naive_out = work / "naive.parquet"
        precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
        for _ in range(args.repeats):  # alternating, so that other work on the machine slows each side alike
            command = [sys.executable, "-c", NAIVE, str(corpus), str(model), str(naive_out), args.labels]
            figures.setdefault("naive", []).append(timed([*command, str(args.batch_size)]))
            for precision in precisions:
                out = work / f"batchnlp-{precision}"
                flags = ["--no-dedup", "--overwrite", "--precision", precision, "--device", "cpu", "--quiet"]
                run = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--task", "zero-shot"]
                run += ["--model", f"zero-shot={model}", "--labels", args.labels, *flags]
                figures.setdefault(precision, []).append(timed(run))
                naive_best = [labels[0] for labels in pq.read_table(naive_out).column("labels").to_pylist()]
                ours = ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table()
                best = [value["label"] for value in ours.column("zero-shot").to_pylist()]
                agreement[precision] = sum(a == b for a, b in zip(best, naive_best, strict=True)) / len(best)
                totals = json.loads((out / "_manifest.json").read_text())["totals"]
                rescored[precision] = totals.get("rescored", 0)

    print(f"{args.rows} texts x {len(labels)} labels = {args.rows * len(labels)} pairs, {tokens:,} tokens; "
          f"DistilBERT-{args.size} NLI (random weights)")  # fmt: skip
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}")
    print(f"1-minute load average after each side, in order: {', '.join(LOADS)}")
    naive = statistics.median(figures["naive"])
    shown = ", ".join(f"{t:.1f}" for t in figures["naive"])
    print(f"naive pipeline (batch {args.batch_size}): {shown} s; median {naive:.1f} s, {args.rows / naive:.1f} rows/s")
    for precision in precisions:
        seconds = statistics.median(figures[precision])
        shown = ", ".join(f"{t:.1f}" for t in figures[precision])
        print(
            f"batchnlp {precision} --no-dedup: {shown} s; median {seconds:.1f} s, {args.rows / seconds:.1f} rows/s, "
            f"{naive / seconds:.2f}x; best label equal to the pipeline's on {agreement[precision]:.1%} of rows; "
            f"{rescored[precision]} rows rescored in fp32"
        )


if __name__ == "__main__":
    main()
