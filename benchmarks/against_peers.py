"""batchnlp against the scripts its users would write instead, whole processes, one machine, in
alternating rounds (best of ``--rounds``): the naive ``transformers.pipeline`` script, and the
one a performance-minded user writes, ONNX Runtime over an optimised export
(``benchmarks/ort_script.py``), in fp32 and dynamic int8.

    python benchmarks/against_peers.py                     # 1,200 rows, DistilBERT-base, 2 rounds
    python benchmarks/against_peers.py --rows 3600 --rounds 2 --no-naive

The corpus and the model are ``benchmarks/against_pipeline.py``'s (English reviews cycled to
``--rows``; random-weight DistilBERT-base with the real vocabulary: speed does not depend on the
weights, and label agreement is between precisions of one model). The ONNX export is made once
before the rounds and its time printed apart, as the script caches it; so is batchnlp's first run
of each precision, which makes its own cached export (``--torch`` adds batchnlp on torch, ``--bf16``
batchnlp in bf16, compared with the script's fp32). Prints each setting's best
wall time, rows/s, first row, batchnlp's ratio to the ONNX Runtime script of the same precision,
and how the labels of each compare; then the CPU flags. Timing lives here, never in a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from against_pipeline import compare, labels, timed
from job_throughput import write_corpus

from batchnlp.testing import build_classifier

HERE = Path(__file__).resolve().parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    found = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return " ".join(flag for flag in FLAGS if flag in found) or "unknown"


def settings(
    corpus: Path, model: Path, work: Path, naive: bool, torch: bool, bf16: bool
) -> dict[str, tuple[list[str], Path]]:
    """Each setting's command and where it writes."""
    python = sys.executable

    def batchnlp(precision: str, backend: str) -> tuple[list[str], Path]:
        out = work / f"batchnlp-{backend}-{precision}"
        return ([python, "-m", "batchnlp", "run", str(corpus), str(out), "--quiet", "--overwrite", "--id-column", "id",
                 "--model", f"sentiment={model}", "--device", "cpu", "--precision", precision, "--backend", backend],
                out)  # fmt: skip

    found = {}
    if naive:
        out = work / "naive.parquet"
        found["naive bs16"] = ([python, str(HERE / "naive_pipeline.py"), str(corpus), str(model), str(out),
                                "--batch-size", "16"], out)  # fmt: skip
    for precision in ("fp32", "int8"):
        out = work / f"ort-{precision}.parquet"
        command = [python, str(HERE / "ort_script.py"), str(corpus), str(model), str(out)]
        found[f"ORT script {precision}"] = ([*command, "--int8"] if precision == "int8" else command, out)
        for backend in ("auto", "torch") if torch else ("auto",):
            name = f"batchnlp {precision}" if backend == "auto" else f"batchnlp {backend} {precision}"
            found[name] = batchnlp(precision, backend)
    if bf16:  # torch on the CPU's bf16 units, against the script's fp32 (ONNX Runtime has no CPU bf16 path)
        found["batchnlp bf16"] = batchnlp("bf16", "auto")
    return found


def read(out: Path) -> tuple[dict[int, tuple[str, float]], float]:
    """The labels a setting wrote, and its first row (from its stdout line or batchnlp's manifest)."""
    if out.is_dir():
        table = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(str(out / "*.parquet"))))
        return labels(table, "sentiment"), json.loads((out / "_manifest.json").read_text())["startup"]["first_row_s"]
    return labels(pq.read_table(out), "sentiment"), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--no-naive", action="store_true", help="leave the naive pipeline script out")
    parser.add_argument("--torch", action="store_true", help="also run batchnlp on its torch backend")
    parser.add_argument("--bf16", action="store_true", help="also run batchnlp bf16 (torch), against the fp32 script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_classifier(work / "model", size=args.size)
        corpus = write_corpus(work / "corpus.jsonl", args.rows)
        for precision in ("fp32", "int8"):
            started = time.perf_counter()
            timed([sys.executable, str(HERE / "ort_script.py"), "--export-only", str(model),
                   *(["--int8"] if precision == "int8" else [])])  # fmt: skip
            print(f"ONNX export ({precision}, once, cached): {time.perf_counter() - started:.1f} s")
        runs = settings(corpus, model, work, not args.no_naive, args.torch, args.bf16)
        os.environ["BATCHNLP_CACHE"] = str(work / "cache")  # batchnlp's ONNX exports, made by its first run
        for precision in ("fp32", "int8"):
            wall = timed(runs[f"batchnlp {precision}"][0])[0]
            print(f"batchnlp first run ({precision}, exports to ONNX once, cached): {wall:.1f} s")
        walls: dict[str, list[float]] = {name: [] for name in runs}
        firsts: dict[str, list[float]] = {name: [] for name in runs}
        outputs = {}
        for _ in range(args.rounds):
            for name, (command, out) in runs.items():
                wall, _, _, stdout = timed(command)
                outputs[name], first = read(out)
                if stdout.strip():
                    first = json.loads(stdout.strip().splitlines()[-1])["first_row_s"]
                walls[name].append(wall)
                firsts[name].append(first)
        print(f"\n{args.rows} rows, DistilBERT-{args.size} (random weights), best of {args.rounds} alternating rounds")
        print(f"{'setting':>24} {'best s':>8} {'all s':>16} {'rows/s':>8} {'1st row s':>9} {'vs ORT':>7}")
        for name in runs:
            best = min(walls[name])
            peer = f"ORT script {name.split()[-1].replace('bf16', 'fp32')}"
            ratio = f"{min(walls[peer]) / best:.2f}x" if name.startswith("batchnlp") else ""
            every = " ".join(f"{w:.1f}" for w in walls[name])
            print(f"{name:>24} {best:8.1f} {every:>16} {args.rows / best:8.1f} {min(firsts[name]):9.1f} {ratio:>7}")
        print()
        pairs = [("ORT script int8", "ORT script fp32"), ("batchnlp int8", "batchnlp fp32"),
                 ("batchnlp bf16", "batchnlp fp32"), ("batchnlp fp32", "ORT script fp32"),
                 ("ORT script fp32", "naive bs16")]  # fmt: skip
        for name, reference in pairs:
            if name in outputs and reference in outputs:
                print(f"{name} vs {reference}: {compare(outputs[name], outputs[reference])}")
        print(f"CPU flags: {cpu_flags()}")


if __name__ == "__main__":
    main()
