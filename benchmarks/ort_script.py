"""The script a performance-minded user writes instead of batchnlp: the checkpoint exported to ONNX
once, graph-optimised (``onnxruntime.transformers``, fused attention, skip-LayerNorm, bias-GELU),
optionally quantised to dynamic int8, then ONNX Runtime with 2 intra-op threads over the rows
sorted by length, 32 to a batch. Read JSONL, write Parquet.

    python benchmarks/ort_script.py CORPUS.jsonl MODEL_DIR OUT.parquet [--int8] [--threads 2] [--batch-size 32]
    python benchmarks/ort_script.py --export-only MODEL_DIR [--int8]

The ONNX files are cached under MODEL_DIR/onnx/, as such a script keeps them: ``--export-only``
makes them, so ``benchmarks/against_peers.py`` times the labelling and prints the one-off export
apart. Prints one JSON line: seconds from process start to the first labelled row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoConfig, AutoTokenizer


def onnx_model(model_dir: Path, int8: bool) -> Path:
    """MODEL_DIR/onnx/model.onnx (optimised), or its dynamic-int8 quantisation; made once."""
    folder = model_dir / "onnx"
    exported, optimised, quantised = folder / "exported.onnx", folder / "model.onnx", folder / "model-int8.onnx"
    if not optimised.exists():
        import torch
        from onnxruntime.transformers import optimizer
        from transformers import AutoModelForSequenceClassification

        folder.mkdir(exist_ok=True)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
        sample = AutoTokenizer.from_pretrained(model_dir)(["a sample text"], return_tensors="pt")
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
        torch.onnx.export(
            model, (sample["input_ids"], sample["attention_mask"]), str(exported), input_names=list(axes),
            output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
        config = AutoConfig.from_pretrained(model_dir)
        heads, hidden = config.num_attention_heads, config.hidden_size  # DistilBERT maps them to n_heads, dim
        fused = optimizer.optimize_model(str(exported), model_type="bert", num_heads=heads, hidden_size=hidden)
        fused.save_model_to_file(str(optimised))
    if int8 and not quantised.exists():
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # The fused operators (com.microsoft domain) defeat ONNX shape inference: their outputs are float.
        quantize_dynamic(
            str(optimised), str(quantised), weight_type=QuantType.QInt8, per_channel=True,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )  # fmt: skip
    return quantised if int8 else optimised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="CORPUS MODEL_DIR OUT, or MODEL_DIR with --export-only")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--export-only", action="store_true")
    args = parser.parse_args()
    if args.export_only:
        onnx_model(Path(args.paths[0]), args.int8)
        return
    started = psutil.Process().create_time()
    corpus, model_dir, out = args.paths[0], Path(args.paths[1]), args.paths[2]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(onnx_model(model_dir, args.int8)), options, providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    id2label = AutoConfig.from_pretrained(model_dir).id2label
    with open(corpus) as handle:
        rows = [json.loads(line) for line in handle]
    ids = tokenizer([row["text"] for row in rows], truncation=True)["input_ids"]
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    labels: list[dict | None] = [None] * len(rows)
    first_row = None
    for start in range(0, len(order), args.batch_size):
        batch = order[start : start + args.batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, i in enumerate(batch):
            input_ids[row, : len(ids[i])], mask[row, : len(ids[i])] = ids[i], 1
        logits = session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for row, i in enumerate(batch):
            best = int(probs[row].argmax())
            labels[i] = {"label": id2label[best], "score": float(probs[row, best])}
        first_row = first_row or time.time() - started
    table = pa.Table.from_pylist([{**row, "sentiment": label} for row, label in zip(rows, labels, strict=True)])
    pq.write_table(table, out)
    print(json.dumps({"first_row_s": first_row}))


if __name__ == "__main__":
    main()
