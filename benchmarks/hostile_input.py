"""What hostile files cost ``batchnlp run``: peak memory of its process tree and wall time, printed
beside a bound; asserts nothing.

    python benchmarks/hostile_input.py            # the issue's sizes
    python benchmarks/hostile_input.py --scale 0.1

Three inputs, each beside a few good rows that must come out labelled:

- the gzip bomb of issue 27: a ~1.5 MB ``.jsonl.gz`` whose second line decompresses to 1.5 GB;
- a 1 GB plain JSONL file with no newline (one line), next to a small good file;
- a Parquet file with one 2 GB row group: 8.5 MiB cells (past the 8 MiB cap) around good rows.

The bound is the job's peak on the good rows alone (the model, the cluster) plus BOUND_ABOVE_MODEL.
Every generator streams (the Parquet column repeats one buffer), so making the inputs is bounded
too. A run whose tree passes --kill-above is stopped, so the benchmark cannot exhaust a shared
machine. Memory is the tree's proportional set size (see against_pipeline.Sampler).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from against_pipeline import Sampler
from distill_student import cpu_flags

from batchnlp.testing import build_classifier

MiB = 1 << 20
BOUND_ABOVE_MODEL = 300 * MiB
GOOD_ROWS = 20


def good_lines(name: str) -> bytes:
    return b"".join(
        json.dumps({"id": f"{name}-{i}", "text": f"review {i}: fine"}).encode() + b"\n" for i in range(GOOD_ROWS)
    )


def write_long(handle: object, size: int) -> None:
    """A JSON string of ``size`` bytes, written a MiB at a time."""
    block = b"a" * MiB
    for _ in range(size // MiB):
        handle.write(block)  # type: ignore[attr-defined]


def gzip_bomb(directory: Path, size: int) -> Path:
    directory.mkdir()
    path = directory / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(b'{"id": "bomb-first", "text": "the first line"}\n{"id": "bomb-long", "text": "')
        write_long(handle, size)
        handle.write(b'"}\n' + good_lines("bomb"))
    return directory


def no_newline(directory: Path, size: int) -> Path:
    directory.mkdir()
    with (directory / "a-one-line.jsonl").open("wb") as handle:
        handle.write(b'{"id": "long", "text": "')
        write_long(handle, size)
    (directory / "b-good.jsonl").write_bytes(good_lines("good"))
    return directory


def big_row_group(directory: Path, size: int) -> Path:
    """One row group of ``size`` bytes: cells of 8.5 MiB (all one buffer) between good rows."""
    directory.mkdir()
    cell = pa.array(["b" * (8 * MiB + MiB // 2)])
    good = pa.array([f"review {i}: fine" for i in range(GOOD_ROWS // 2)])
    cells = max(1, size // len(cell[0].as_py()))
    text = pa.chunked_array([good, *([cell] * cells), good])
    ids = pa.array([f"row-{i}" for i in range(len(text))])
    table = pa.table({"id": ids, "text": text})
    path = directory / "big.parquet"
    pq.write_table(table, path, row_group_size=len(text), use_dictionary=False, compression="zstd")
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return directory


def run(source: Path, out: Path, model: Path, kill_above: int) -> dict:
    """Wall time, peak tree PSS and the output's rows of one ``batchnlp run``."""
    command = [sys.executable, "-m", "batchnlp", "run", str(source), str(out), "--quiet", "--workers", "1",
               "--on-bad-lines", "skip", "--model", f"sentiment={model}"]  # fmt: skip
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = Sampler(process, gpu=False)
    killed = False
    while process.poll() is None:
        if sampler.peak_memory > kill_above:
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
            killed = True
        time.sleep(0.1)
    wall = time.perf_counter() - started
    output = process.stdout.read().decode()
    figures = {"wall_s": wall, "peak": sampler.peak_memory, "exit": process.returncode, "killed": killed}
    if (out / "_manifest.json").exists():
        totals = json.loads((out / "_manifest.json").read_text())["totals"]
        labelled = pq.read_table(out, columns=["sentiment"]).column("sentiment").drop_null()
        figures.update(rows=totals["rows_out"], bad_lines=totals["bad_lines"], labelled=len(labelled))
    elif output:
        figures["output"] = output[-400:]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Sizes times this (1: the issue's).")
    parser.add_argument("--model", type=Path, help="A checkpoint. Default: a tiny random DistilBERT.")
    parser.add_argument("--kill-above", type=float, default=3.0, help="GiB of tree PSS that stop a run.")
    args = parser.parse_args()
    kill_above = int(args.kill_above * (1 << 30))
    print(f"CPU flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model or build_classifier(root / "model")
        (root / "good").mkdir()
        (root / "good" / "good.jsonl").write_bytes(good_lines("good"))
        baseline = run(root / "good", root / "out-good", model, kill_above)
        bound = baseline["peak"] + BOUND_ABOVE_MODEL
        print(f"model {model}; good rows alone: {baseline['wall_s']:.1f} s, peak {baseline['peak'] / MiB:,.0f} MiB")
        print(f"bound: that peak + {BOUND_ABOVE_MODEL // MiB} MiB = {bound / MiB:,.0f} MiB\n")
        cases = [
            ("gzip bomb, 1.5 GB second line", gzip_bomb, int(1.5e9 * args.scale)),
            ("1 GB plain file, no newline", no_newline, int(1e9 * args.scale)),
            ("Parquet, one 2 GB row group", big_row_group, int(2e9 * args.scale)),
        ]
        for name, make, size in cases:
            started = time.perf_counter()
            source = make(root / name.split(",")[0].replace(" ", "-"), size)
            made = time.perf_counter() - started
            stored = sum(p.stat().st_size for p in source.iterdir())
            figures = run(source, root / f"out-{source.name}", model, kill_above)
            print(f"{name} ({stored / MiB:,.1f} MiB stored, made in {made:.1f} s):")
            peak, within = figures["peak"] / MiB, "within" if figures["peak"] <= bound else "OVER"
            print(f"  exit {figures['exit']}, {figures['wall_s']:.1f} s, peak {peak:,.0f} MiB ({within} the bound)")
            if "rows" in figures:
                print(f"  {figures['labelled']} rows labelled of {figures['rows']}, {figures['bad_lines']} bad lines")
            else:
                killed = " (killed past --kill-above)" if figures["killed"] else ""
                print(f"  no output{killed}: {figures.get('output', '')}")
            for path in sorted(source.iterdir()):
                path.unlink()


if __name__ == "__main__":
    main()
