"""Whole-process throughput of ``batchnlp run`` on real English reviews: prints figures, asserts nothing.

    python benchmarks/job_throughput.py --rows 5000 --workers 1 2

The corpus is ``examples/reviews.jsonl`` (hand-written reviews of mixed length) cycled to
``--rows`` rows; the model is a random-weight DistilBERT of the chosen size with the real
bert-base-uncased vocabulary (speed does not depend on the weights). Each setting runs as its
own process, start-up included, the way a user or a scheduler runs it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

from batchnlp.testing import build_classifier

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, rows: int) -> Path:
    reviews = [json.loads(line) for line in (ROOT / "examples" / "reviews.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in reviews if isinstance(r.get("text"), str) and r["text"].strip()]
    with path.open("w") as handle:
        for i, text in enumerate(islice(cycle(texts), rows)):
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def run_job(corpus: Path, model: Path, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--overwrite", "--quiet",
               "--model", f"sentiment={model}", *extra]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    manifest = json.loads((out / "_manifest.json").read_text())
    totals = manifest["totals"]
    return {
        "wall_s": wall,
        "rows_per_s": totals["rows_out"] / wall,
        "tokens_per_s": totals["tokens"] / wall,
        "padding": totals["padded_tokens"] / max(1, totals["tokens"]) - 1,
        "parts": totals["parts"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_classifier(work / "model", size=args.size)
        corpus = write_corpus(work / "corpus.jsonl", args.rows)
        print(f"{args.rows} rows of examples/reviews.jsonl, DistilBERT-{args.size} (random weights)")
        header = ("workers", "precision", "wall s", "rows/s", "tokens/s", "padding", "parts")
        print(" ".join(f"{name:>9}" for name in header))
        for precision in args.precision:
            for workers in args.workers:
                extra = ["--workers", str(workers), "--precision", precision]
                r = run_job(corpus, model, work / f"out-{workers}-{precision}", extra)
                print(
                    f"{workers:>9} {precision:>9} {r['wall_s']:>9.1f} {r['rows_per_s']:>9.1f} "
                    f"{r['tokens_per_s']:>9.0f} {r['padding']:>9.1%} {r['parts']:>9}"
                )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of one process (driver or worker): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
