"""Whole-process ``batchnlp run --task ner`` against the loop a user writes without batchnlp: prints figures,
asserts nothing.

    python benchmarks/ner.py --rows 2000 --size base --repeats 2

The model is a random-weight cased DistilBERT token classifier (NER labels) of the chosen size with the
real bert-base-uncased vocabulary (speed does not depend on the weights). The corpus is the example
reviews cycled to ``--rows`` rows, each made distinct by a suffix; batchnlp runs with ``--no-dedup`` all
the same, so both sides run the model on every row. The naive side is one process that reads the JSONL,
runs ``transformers.pipeline("token-classification", aggregation_strategy="simple")`` over the texts
(``--batch-size``, 1 by default: the loop as written in the wild) and writes Parquet. Each run is its own
process, start-up included, as a scheduler runs it; the two alternate ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

from against_peers import cpu_flags

from batchnlp.testing import build_token_classifier

ROOT = Path(__file__).resolve().parents[1]

NAIVE = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from transformers import pipeline
corpus, model, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [json.loads(line) for line in open(corpus)]
ner = pipeline("token-classification", model=model, aggregation_strategy="simple", device="cpu")
found = ner([row["text"] for row in rows], batch_size=batch)
entities = [[{"entity": e["entity_group"], "score": float(e["score"]), "start": e["start"], "end": e["end"],
              "word": e["word"]} for e in row] for row in found]
pq.write_table(pa.Table.from_pylist([{**row, "ner": e} for row, e in zip(rows, entities)]), out)
"""


def reviews() -> list[str]:
    records = [json.loads(line) for line in (ROOT / "examples" / "reviews.jsonl").read_text().splitlines()]
    return [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--size", default="base", choices=["tiny", "base"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1, help="the naive pipeline's batch_size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ner-bench-"))
    model = build_token_classifier(work / "model", size=args.size, cased=True)
    corpus = work / "corpus.jsonl"
    texts = [f"{text} (#{i})" for i, text in enumerate(islice(cycle(reviews()), args.rows))]
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    print(f"{args.rows:,} texts (mean {sum(map(len, texts)) / len(texts):.0f} characters), DistilBERT-{args.size} "
          f"token classifier; CPU flags: {cpu_flags()}")  # fmt: skip
    python = sys.executable
    batchnlp = [python, "-m", "batchnlp", "run", str(corpus), str(work / "out"), "--task", "ner",
                "--model", f"ner={model}", "--no-dedup", "--overwrite", "--quiet"]  # fmt: skip
    naive = [python, "-c", NAIVE, str(corpus), str(model), str(work / "naive.parquet"), str(args.batch_size)]
    times: dict[str, list[float]] = {"naive": [], "batchnlp": []}
    for _ in range(args.repeats):
        times["naive"].append(timed(naive))
        times["batchnlp"].append(timed(batchnlp))
    manifest = json.loads((work / "out" / "_manifest.json").read_text())
    totals = manifest["totals"]
    print(f"batchnlp ran {manifest['device']} {manifest.get('precision')}, {totals['tokens']:,} tokens, "
          f"{totals.get('padded_tokens', 0):,} with padding")  # fmt: skip
    for name, seconds in times.items():
        print(f"{name}: " + ", ".join(f"{s:.1f} s" for s in seconds) + f" ({args.rows / min(seconds):.0f} rows/s best)")
    print(f"speed-up (best of each): {min(times['naive']) / min(times['batchnlp']):.2f}x")


if __name__ == "__main__":
    main()
