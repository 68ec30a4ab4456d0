"""Where the time goes against ONNX Runtime: the forward pass alone, on the same padded batches, in
one process with one thread (a batchnlp CPU worker's share), batchnlp's model against the
optimised ONNX export of ``benchmarks/ort_script.py``; then PyTorch's profile of batchnlp's
forward, by operator.

    python benchmarks/forward_against_ort.py                 # DistilBERT-base, 1,200 reviews, fp32
    python benchmarks/forward_against_ort.py --threads 2 --batch-tokens 4096

Tokenising, reading and writing are left out, so the ratio here is the kernels' alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from job_throughput import write_corpus
from ort_script import onnx_model

from batchnlp.inference.models.load import load_sequence_classifier
from batchnlp.testing import build_classifier


def batches(ids: list[list[int]], batch_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Length-sorted batches under a padded-token budget, as batchnlp's engine cuts them."""
    ordered = sorted(ids, key=len)
    found, current = [], []
    for row in ordered:
        if current and len(row) * (len(current) + 1) > batch_tokens:
            found.append(current)
            current = []
        current.append(row)
    found.append(current)
    padded = []
    for rows in found:
        width = max(map(len, rows))
        input_ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)], mask[i, : len(row)] = row, 1
        padded.append((input_ids, mask))
    return padded


def best_of(rounds: int, run: callable) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=8192, help="batchnlp's CPU default token budget")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_classifier(work / "model", size="base")
        corpus = write_corpus(work / "corpus.jsonl", args.rows)
        tokenizer, model = load_sequence_classifier(model_dir, str(model_dir))
        texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
        padded = batches(tokenizer(texts, truncation=True)["input_ids"], args.batch_tokens)
        tokens = sum(int(mask.sum()) for _, mask in padded)
        cells = sum(mask.size for _, mask in padded)

        def ours() -> None:
            with torch.inference_mode():
                for input_ids, mask in padded:
                    model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(onnx_model(model_dir, False)), options, providers=["CPUExecutionProvider"])

        def theirs() -> None:
            for input_ids, mask in padded:
                session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})

        ours(), theirs()  # warm-up
        torch_s, ort_s = best_of(args.rounds, ours), best_of(args.rounds, theirs)
        print(f"{len(padded)} batches, {tokens} tokens ({cells} with padding), {args.threads} thread(s), best of "
              f"{args.rounds}")  # fmt: skip
        print(f"batchnlp forward (torch eager) {torch_s:.2f} s, {tokens / torch_s:,.0f} tokens/s")
        print(f"ONNX Runtime (fused export)    {ort_s:.2f} s, {tokens / ort_s:,.0f} tokens/s")
        print(f"batchnlp / ORT: {ort_s / torch_s:.2f}x")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            ours()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
