"""``batchnlp run`` against the naive ``transformers.pipeline`` script, whole process, one machine, one run.

    python benchmarks/against_pipeline.py                      # 1,200 rows, CPU: naive bs 1 and 16, fp32 int8 bf16
    python benchmarks/against_pipeline.py --rows 200000 --device cuda --precision bf16 --naive-batch-sizes

Every setting runs as its own process, start-up included, the way a user or a scheduler runs
it: ``benchmarks/naive_pipeline.py`` (read JSONL, ``pipeline("text-classification")``, write
Parquet) at each ``--naive-batch-sizes``, then ``batchnlp run`` at each ``--precision``. The
corpus is ``examples/reviews.jsonl`` (hand-written English reviews, 4 to 214 tokens) cycled to
``--rows``; the model a random-weight DistilBERT-base with the real bert-base-uncased vocabulary
(speed does not depend on the weights). Prints, per setting: rows/s, tokens/s, the ratio to the
best naive setting, peak memory of the whole process tree (PSS), seconds from process start to the
first labelled row and tokens/s from then on (the steady state, start-up left out); then how
batchnlp's labels compare with the naive script's (fp32) and with batchnlp fp32 (other
precisions). On a GPU it also samples utilisation through NVML.
Timing lives here, never in a test's assertions.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from job_throughput import write_corpus

from batchnlp.testing import build_classifier

HERE = Path(__file__).resolve().parent


class Sampler:
    """Samples, while a command runs, its process tree's memory and the GPU's utilisation.

    Memory is the tree's proportional set size (PSS): pages shared between processes (a worker
    forked from the fork server shares its libraries) count once, split among their sharers;
    summed resident sizes would count them once per process."""

    def __init__(self, process: psutil.Popen, gpu: bool) -> None:
        self.process, self.peak_memory, self.gpu = process, 0, []
        self.nvml = _nvml_handle() if gpu else None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.process.poll() is None:
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak_memory = max(self.peak_memory, sum(_pss(p) for p in tree))
            except psutil.Error:
                pass
            if self.nvml is not None:
                import pynvml

                self.gpu.append((time.time(), pynvml.nvmlDeviceGetUtilizationRates(self.nvml).gpu))
            time.sleep(0.1)

    def gpu_busy(self, since: float) -> float | None:
        """Mean GPU utilisation (0-1) from ``since`` (the first labelled row) to the end."""
        samples = [util for at, util in self.gpu if at >= since]
        return sum(samples) / len(samples) / 100 if samples else None


def _pss(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except psutil.Error:
        return 0


def _nvml_handle() -> object:
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def timed(command: list[str], gpu: bool = False) -> tuple[float, float, Sampler, str]:
    """(wall seconds, launch time, sampler, stdout) of one whole process."""
    launched = time.time()
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(process, gpu)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    sampler.thread.join()
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return wall, launched, sampler, stdout


def labels(table: pa.Table, column: str) -> dict[int, tuple[str, float]]:
    values = table.column(column).to_pylist()
    return {i: (v["label"], v["score"]) for i, v in zip(table.column("id").to_pylist(), values, strict=True) if v}


def compare(ours: dict[int, tuple[str, float]], reference: dict[int, tuple[str, float]]) -> str:
    same = sum(ours[i][0] == reference[i][0] for i in reference)
    worst = max(abs(ours[i][1] - reference[i][1]) for i in reference)
    return f"labels equal on {same}/{len(reference)} rows ({same / len(reference):.2%}), max |score diff| {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--naive-batch-sizes", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="batchnlp --workers (default: its own layout)")
    parser.add_argument("--tokens-per-batch", type=int, help="batchnlp --tokens-per-batch (default: its own)")
    args = parser.parse_args()
    gpu = args.device != "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_classifier(work / "model", size=args.size)
        corpus = write_corpus(work / "corpus.jsonl", args.rows)
        cpu = f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
        print(f"{args.rows} rows of examples/reviews.jsonl, DistilBERT-{args.size} (random weights), {cpu}")
        rows, outputs = [], {}
        for batch_size in args.naive_batch_sizes:
            out = work / f"naive-{batch_size}.parquet"
            command = [sys.executable, str(HERE / "naive_pipeline.py"), str(corpus), str(model), str(out)]
            wall, _, sampler, stdout = timed([*command, "--batch-size", str(batch_size), "--device", args.device], gpu)
            outputs[f"naive bs{batch_size}"] = labels(pq.read_table(out), "sentiment")
            first = json.loads(stdout.strip().splitlines()[-1])["first_row_s"]
            rows.append((f"naive bs{batch_size}", wall, None, sampler.peak_memory, first, None))
        tokens = None
        for precision in args.precision:
            out = work / f"batchnlp-{precision}"
            command = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--quiet", "--id-column", "id",
                       "--model", f"sentiment={model}", "--device", args.device, "--precision", precision]  # fmt: skip
            command += ["--workers", str(args.workers)] if args.workers else []
            command += ["--tokens-per-batch", str(args.tokens_per_batch)] if args.tokens_per_batch else []
            wall, launched, sampler, _ = timed(command, gpu)
            manifest = json.loads((out / "_manifest.json").read_text())
            tokens = manifest["totals"]["tokens"]
            parts = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(str(out / "*.parquet"))))
            outputs[f"batchnlp {precision}"] = labels(parts, "sentiment")
            first = manifest["startup"]["first_row_s"]
            busy = sampler.gpu_busy(launched + first) if gpu else None
            rows.append((f"batchnlp {precision}", wall, manifest, sampler.peak_memory, first, busy))
        report(rows, tokens, args.rows)
        print()
        for name, _, *_ in rows:
            if name.startswith("batchnlp"):
                reference = "naive bs1" if name.endswith("fp32") else "batchnlp fp32"
                if reference in outputs and reference != name:
                    print(f"{name} vs {reference}: {compare(outputs[name], outputs[reference])}")


def report(rows: list[tuple], tokens: int | None, count: int) -> None:
    naive = [wall for name, wall, *_ in rows if name.startswith("naive")]
    best = min(naive) if naive else None
    header = ("setting", "wall s", "rows/s", "tokens/s", "× naive", "peak PSS MiB", "1st row s", "after 1st")
    header += ("padding", "GPU busy")
    print(" ".join(f"{h:>13}" for h in header))
    for name, wall, manifest, peak, first, busy in rows:
        padding = manifest["totals"]["padded_tokens"] / manifest["totals"]["tokens"] - 1 if manifest else None
        cells = [
            name,
            f"{wall:.1f}",
            f"{count / wall:.1f}",
            f"{tokens / wall:,.0f}" if tokens else "-",
            f"{best / wall:.2f}" if best else "-",
            f"{peak / 2**20:,.0f}",
            f"{first:.1f}" if first else "-",
            f"{tokens / (wall - first):,.0f}" if tokens and first else "-",
            f"{padding:.1%}" if padding is not None else "-",
            f"{busy:.0%}" if busy is not None else "-",
        ]
        print(" ".join(f"{c:>13}" for c in cells))
        if manifest:
            seconds = manifest["totals"]["worker_seconds"]
            startup = manifest["startup"]
            shares = manifest["totals"].get("shares", {})
            print(f"{'':>13} worker seconds {seconds}; models loaded after {startup['models_loaded_s']} s; "
                  f"shares {shares}")  # fmt: skip


if __name__ == "__main__":
    main()
