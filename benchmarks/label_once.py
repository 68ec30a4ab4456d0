"""What labelling each distinct input once, and the label cache across nights, cost and save: prints
figures, asserts nothing.

    python benchmarks/label_once.py overhead --rows 6000 --size base
    python benchmarks/label_once.py nightly --rows 2000000 --size tiny --change 0.05

``overhead``: whole-process ``batchnlp run`` on a corpus with no repeated text and on one of
reviews cycled (most rows repeat), each with and without ``--no-dedup``, alternating, twice.
``nightly``: a snapshot of ``--rows`` rows labelled into a fresh ``--label-cache``, then the next
night's snapshot, in which ``--change`` of the rows have a new text; night 2's model time and
whole-process time as shares of night 1's, the cache's size, and the lookups' own cost.

The model is a random-weight DistilBERT of the chosen size with the real bert-base-uncased
vocabulary (speed does not depend on the weights); each run is its own process, start-up
included, as a scheduler runs it.
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

from batchnlp.testing import build_classifier

ROOT = Path(__file__).resolve().parents[1]


def reviews() -> list[str]:
    records = [json.loads(line) for line in (ROOT / "examples" / "reviews.jsonl").read_text().splitlines()]
    return [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]


def write(path: Path, texts: list[str]) -> Path:
    with path.open("w") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def run(corpus: Path, model: Path, out: Path, *flags: str) -> dict:
    command = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--overwrite", "--quiet",
               "--model", f"sentiment={model}", *flags]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    totals = json.loads((out / "_manifest.json").read_text())["totals"]
    seconds = totals["worker_seconds"]
    return {
        "wall_s": wall,
        "model_s": sum(value for key, value in seconds.items() if key.startswith("engine:")),
        "tokens": totals["tokens"],
        "dedup": totals.get("dedup", {}).get("sentiment", {}),
    }


def same_outputs(once: Path, each: Path) -> str:
    """How the labels of a deduplicated run compare with labelling every row's."""
    import numpy as np
    import pyarrow.dataset as ds

    a, b = (ds.dataset(str(out), format="parquet").to_table().sort_by("id") for out in (once, each))
    x, y = a.column("sentiment").to_pylist(), b.column("sentiment").to_pylist()
    labels = sum(p["label"] == q["label"] for p, q in zip(x, y, strict=True))
    diff = np.abs(np.array([p["score"] for p in x]) - np.array([q["score"] for q in y])).max()
    errors = a.column("_error").to_pylist() == b.column("_error").to_pylist()
    return f"labels equal {labels:,}/{len(x):,}, largest score difference {diff:.2e}, _error equal: {errors}"


def overhead(args: argparse.Namespace, model: Path, work: Path) -> None:
    texts = list(islice(cycle(reviews()), args.rows))
    corpora = {
        "no repeated text": write(work / "unique.jsonl", [f"{text} (#{i})" for i, text in enumerate(texts)]),
        "reviews cycled": write(work / "cycled.jsonl", texts),
    }
    for name, corpus in corpora.items():
        figures: dict[str, list[dict]] = {"dedup": [], "--no-dedup": []}
        for _ in range(args.repeats):
            for setting, flags in (("dedup", []), ("--no-dedup", ["--no-dedup"])):
                figures[setting].append(run(corpus, model, work / "out", *flags))
        print(f"{name}, {args.rows:,} rows, {args.size}, CPU flags: {cpu_flags()}")
        for setting, runs in figures.items():
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
            print(f"  {setting:>11}: wall {walls} s; tokens run {runs[0]['tokens']:,}; {runs[0]['dedup'] or ''}")
        best = {setting: min(r["wall_s"] for r in runs) for setting, runs in figures.items()}
        print(f"  dedup / --no-dedup (best of {args.repeats}): {best['dedup'] / best['--no-dedup']:.3f}")
        run(corpus, model, work / "once")
        run(corpus, model, work / "each", "--no-dedup")
        print(f"  outputs: {same_outputs(work / 'once', work / 'each')}")


def nightly(args: argparse.Namespace, model: Path, work: Path) -> None:
    base = reviews()
    first = [f"{base[i % args.distinct % len(base)]} (#{i % args.distinct})" for i in range(args.rows)]
    step = round(1 / args.change)
    second = [f"{text} (edited)" if i % step == 0 else text for i, text in enumerate(first)]
    cache = work / "cache"
    nights = []
    for night, texts in enumerate((first, second), start=1):
        corpus = write(work / f"night-{night}.jsonl", texts)
        nights.append(run(corpus, model, work / f"out-{night}", "--label-cache", str(cache)))
    command = [sys.executable, "-m", "batchnlp", "cache", "inspect", str(cache), "--json"]
    inspect = subprocess.run(command, check=True, capture_output=True, text=True)
    size = json.loads(inspect.stdout)
    one, two = nights
    print(f"nightly snapshot, {args.rows:,} rows ({args.distinct:,} distinct texts), {args.change:.0%} changed, "
          f"{args.size}, CPU flags: {cpu_flags()}")  # fmt: skip
    for night, figures in enumerate(nights, start=1):
        d = figures["dedup"]
        print(f"  night {night}: wall {figures['wall_s']:.1f} s, model {figures['model_s']:.1f} s, "
              f"tokens run {figures['tokens']:,}, run {d.get('run', 0):,}, cached {d.get('cached', 0):,}, "
              f"lookups {d.get('lookup_s', 0):.2f} s reading {d.get('lookup_bytes', 0):,} bytes "
              f"in {d.get('lookup_files', 0):,} file opens")  # fmt: skip
    print(f"  night 2 / night 1: model time {two['model_s'] / one['model_s']:.3f}, whole process "
          f"{two['wall_s'] / one['wall_s']:.3f}")  # fmt: skip
    print(f"  cache: {size['entries']:,} entries, {size['bytes']:,} bytes in {size['files']:,} files "
          f"({size['bytes'] / max(size['entries'], 1):.1f} bytes an entry)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["overhead", "nightly"])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--distinct", type=int, default=1_500_000, help="nightly: distinct texts in a snapshot")
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--change", type=float, default=0.05, help="nightly: share of rows with a new text")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep corpora and outputs here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model = build_classifier(work / "model", size=args.size)
        (overhead if args.what == "overhead" else nightly)(args, model, work)


if __name__ == "__main__":
    main()
