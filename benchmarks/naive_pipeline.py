"""The script a user writes without batchnlp: read JSONL, ``pipeline("text-classification")``, write Parquet.

    python benchmarks/naive_pipeline.py CORPUS.jsonl MODEL_DIR OUT.parquet --batch-size 16

It is the baseline of ``benchmarks/against_pipeline.py``, kept as plain as such a script is in
the wild. It prints one JSON line: seconds from process start to the first labelled row.
"""

from __future__ import annotations

import argparse
import json
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    started = psutil.Process().create_time()
    with open(args.corpus) as handle:
        rows = [json.loads(line) for line in handle]
    classifier = pipeline("text-classification", model=args.model, device=args.device)
    labels, first_row = [], None
    for result in classifier((row["text"] for row in rows), batch_size=args.batch_size, truncation=True):
        first_row = first_row or time.time() - started
        labels.append(result)
    table = pa.Table.from_pylist([{**row, "sentiment": label} for row, label in zip(rows, labels, strict=True)])
    pq.write_table(table, args.out)
    print(json.dumps({"first_row_s": first_row}))


if __name__ == "__main__":
    main()
