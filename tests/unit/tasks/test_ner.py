"""Fidelity: our batched entities equal ``transformers.pipeline("token-classification")``'s, for every
aggregation strategy, with a WordPiece tokenizer (a tiny DistilBERT on the bert-base-uncased vocabulary)
and a byte-level BPE one (a tiny RoBERTa); long texts' windows merged per token with exact offsets;
--entities, --redact, int8 and the spec's settings."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchnlp.errors import ModelError
from batchnlp.inference.engine import Engine
from batchnlp.inference.models.load import load_token_classifier
from batchnlp.spec import JobSpec, SpecError
from batchnlp.tasks import AGGREGATIONS, TASKS, output_schema, task_columns
from batchnlp.tasks.columns import ENTITIES
from batchnlp.tasks.ner import NamedEntities, _merged, redact
from batchnlp.testing import NER_LABELS
from tests.support import REPO

STRANGERS = [
    "Bonjour Zoë, ça va? Café olé",
    "line one\r\nline two\r\n",
    "e\u0301te\u0301 nai\u0308ve in Sa\u0303o Paulo",  # combining marks
    "สวัสดีครับ Bangkok",  # Thai
    "ሰላም ነው Addis Ababa",  # Amharic
    "I ❤️ NYC 😀😀 ok 👩‍👩‍👧",  # emoji, a ZWJ sequence
    "a",
    "Ω",
]


def spec_of(model: Path, **settings):
    job = {"input": "in.jsonl", "output": "out/", "tasks": ["ner"], "models": {"ner": str(model)}, **settings}
    return JobSpec.from_settings(job).tasks[0]


def make_task(model: Path, max_length: int | None = None, precision: str = "fp32", backend: str = "torch", **settings):
    engine = Engine("cpu", precision, 4096, backend=backend, rescore_margin=settings.pop("rescore_margin", None))
    return NamedEntities(spec_of(model, **settings), model, engine, max_length)


def build_roberta(dest: Path, seed: int = 0) -> Path:
    """A tiny random RoBERTa token classifier with a byte-level BPE tokenizer trained on the example reviews."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForTokenClassification, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(
        review_texts(), vocab_size=800, min_frequency=2, special_tokens=special, show_progress=False
    )
    bos, eos = ("<s>", bpe.token_to_id("<s>")), ("</s>", bpe.token_to_id("</s>"))
    bpe._tokenizer.post_processor = RobertaProcessing(eos, bos, trim_offsets=True, add_prefix_space=False)
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        **dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), special, strict=True)),
        sep_token="</s>",
        cls_token="<s>",
        model_max_length=128,
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        initializer_range=0.2,
        id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = RobertaForTokenClassification(config).eval()
    with torch.no_grad():  # a head that spreads the labels, as batchnlp.testing.build_token_classifier's
        generator = torch.Generator().manual_seed(seed)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 2)
        model.classifier.bias.copy_(torch.linspace(1.5, 0.0, len(NER_LABELS)))
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def review_texts() -> list[str]:
    records = [json.loads(line) for line in (REPO / "examples" / "reviews.jsonl").read_text().splitlines() if line]
    return [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]


@pytest.fixture(scope="module")
def roberta_model(tmp_path_factory) -> Path:
    return build_roberta(tmp_path_factory.mktemp("models") / "roberta-ner")


@pytest.fixture(scope="module")
def models(ner_model, roberta_model) -> dict[str, Path]:
    return {"wordpiece": ner_model, "bpe": roberta_model}


def pipeline_entities(model: Path, texts: list[str], aggregation: str) -> list[list[dict]]:
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(model)
    runner = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(model),
        tokenizer=tokenizer,
        aggregation_strategy=aggregation,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words": the BPE heuristic, as ours
        found = runner(texts)
    return [[{**entity, "entity": entity.get("entity_group", entity.get("entity"))} for entity in row] for row in found]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_entities_equal_the_token_classification_pipeline(models, tokenizer, aggregation):
    model = models[tokenizer]
    task = make_task(model, aggregation=aggregation)
    texts = [text for text in review_texts()[:60] + STRANGERS if len(task.tokenizer(text)["input_ids"]) <= 128]
    assert len(texts) >= 50

    column, _ = task.annotate(texts)
    expected = pipeline_entities(model, texts, aggregation)

    assert column.type == ENTITIES
    assert sum(map(len, expected)) >= 300, "a random head that finds few entities could not fail this test"
    assert len({e["entity"] for row in expected for e in row}) >= 3, "several entity types"
    for text, got, want in zip(texts, column.to_pylist(), expected, strict=True):
        key = ("entity", "start", "end", "word")
        assert [tuple(e[k] for k in key) for e in got] == [tuple(e[k] for k in key) for e in want], text
        np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in want], atol=1e-4)


def test_a_long_texts_windows_cover_each_token_once_with_exact_offsets(ner_model):
    text = ("Alice Smith flew from Paris to Addis Ababa.\r\n Zoë 😀 e\u0301te\u0301 สวัสดี " * 1400)[:100_000]
    task = make_task(ner_model, max_length=64, aggregation="none")
    inputs = task.preprocess([text])
    assert len(inputs.input_ids) > 100 and inputs.text_tokens()[0] == sum(map(len, inputs.input_ids))

    full = task.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    logits = [np.zeros((len(ids), len(NER_LABELS)), np.float32) for ids in inputs.input_ids]
    [(ids, offsets, _)] = list(_merged(inputs, logits))
    assert ids.tolist() == full["input_ids"], "every token once, in order, across the windows"
    assert offsets.tolist() == [list(pair) for pair in full["offset_mapping"]]

    [found] = task.annotate([text])[0].to_pylist()
    assert len(found) > 1000
    for entity in found:
        assert 0 <= entity["start"] < entity["end"] <= len(text)
        piece = text[entity["start"] : entity["end"]]
        assert entity["word"] == piece or entity["word"].removeprefix("##") in piece.lower() or "[UNK]" not in piece


def test_each_token_is_read_in_the_window_where_it_has_the_most_context(ner_model):
    text = " ".join(review_texts()[:4])
    task = make_task(ner_model, max_length=40)
    inputs = task.preprocess([text])
    windows = len(inputs.input_ids)
    assert windows >= 5 and task.stride == 19
    # Window w's logits say w: the merge's pick is readable from the scores.
    logits = [np.tile(np.eye(len(NER_LABELS), dtype=np.float32)[w % len(NER_LABELS)], (len(ids), 1)) * 9 for w, ids
              in enumerate(inputs.input_ids)]  # fmt: skip
    [(ids, _, scores)] = list(_merged(inputs, logits))
    picked = scores.argmax(axis=-1)
    for g in range(len(ids)):
        sizes = [len(ids) - 2 for ids in inputs.input_ids]  # [CLS] and [SEP] aside
        holding = [w for w in range(windows) if inputs.starts[w] <= g < inputs.starts[w] + sizes[w]]
        context = [min(g - inputs.starts[w], inputs.starts[w] + sizes[w] - 1 - g) for w in holding]
        assert picked[g] == holding[int(np.argmax(context))] % len(NER_LABELS), g


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_strange_scripts_give_valid_offsets(models, tokenizer):
    task = make_task(models[tokenizer], aggregation="none")
    column, _ = task.annotate(STRANGERS)
    for text, found in zip(STRANGERS, column.to_pylist(), strict=True):
        for entity in found:
            assert 0 <= entity["start"] <= entity["end"] <= len(text), (text, entity)


def test_no_texts_no_entities(ner_model):
    column, stats = make_task(ner_model).annotate([])
    assert column.type == ENTITIES and len(column) == 0 and stats.tokens == 0


def test_entities_keeps_the_named_types(ner_model):
    texts = review_texts()[:20]
    everything = make_task(ner_model).annotate(texts)[0].to_pylist()
    some = make_task(ner_model, entities="PER,LOC").annotate(texts)[0].to_pylist()
    assert some == [[e for e in row if e["entity"] in ("PER", "LOC")] for row in everything]
    assert sum(map(len, some)) > 0
    tokens = make_task(ner_model, aggregation="none", entities=["PER"]).annotate(texts)[0].to_pylist()
    assert {e["entity"] for row in tokens for e in row} <= {"B-PER", "I-PER"} and any(tokens)


def test_redact_replaces_each_kept_entity_by_its_type(ner_model):
    texts = review_texts()[:20]
    task = make_task(ner_model, redact=True, entities=["PER", "ORG"])
    column, _ = task.annotate(texts)
    assert column.type == TASKS["ner"].output_type(task.spec)
    [(entities_field, found), (redacted_field, redacted)] = task_columns(task.spec, column.type, column)
    assert (entities_field.name, redacted_field.name) == ("ner", "ner_redacted")
    for text, row, out in zip(texts, found.to_pylist(), redacted.to_pylist(), strict=True):
        assert out == redact(text, row)
        kept = text
        for entity in sorted(row, key=lambda e: -e["start"]):
            kept = kept[: entity["start"]] + kept[entity["end"] :]
        assert out.replace("[PER]", "").replace("[ORG]", "") == kept


def test_redact_merges_overlapping_and_touching_spans():
    def entity(kind, start, end):
        return {"entity": kind, "start": start, "end": end, "score": 1.0, "word": ""}

    text = "Alice Smith met Bob at Acme"
    assert (
        redact(text, [entity("PER", 0, 5), entity("PER", 6, 11), entity("ORG", 23, 27)])
        == "[PER] [PER] met Bob at [ORG]"
    )
    assert redact(text, [entity("PER", 0, 3), entity("PER", 3, 5)]) == "[PER] Smith met Bob at Acme", (
        "one word's tokens"
    )
    assert redact(text, [entity("PER", 0, 8), entity("LOC", 6, 11)]) == "[PER] met Bob at Acme", "overlapping: one span"
    assert redact(text, [entity("PER", 0, 5), entity("ORG", 5, 6)]) == "[PER][ORG]Smith met Bob at Acme"
    tokens = [entity("B-PER", 0, 3), entity("I-PER", 3, 5)]
    assert redact(text, tokens, "none") == "[PER] Smith met Bob at Acme", "none: the label less its prefix"
    assert redact("", []) == ""


def test_a_spread_value_is_two_columns_with_nulls_in_both(ner_model):
    spec = spec_of(ner_model, redact=True)
    schema = output_schema(pa.schema([("text", pa.string())]), (spec,))
    assert schema.names == ["text", "ner", "ner_redacted", "_error"]
    assert schema.field("ner").type == ENTITIES and schema.field("ner_redacted").type == pa.string()
    values = pa.array([{"entities": [], "redacted": "x"}, None], TASKS["ner"].output_type(spec))
    [(_, entities), (_, redacted)] = task_columns(spec, values.type, values)
    assert entities.to_pylist() == [[], None] and redacted.to_pylist() == ["x", None]


def test_int8_rescores_near_ties_in_fp32(ner_model):
    texts = review_texts()[:30]
    fp32 = make_task(ner_model, aggregation="none").annotate(texts)[0].to_pylist()
    column, stats = make_task(ner_model, precision="int8", aggregation="none", rescore_margin=0.99).annotate(texts)
    assert stats.rescored > 0
    got = column.to_pylist()
    for mine, theirs in zip(got, fp32, strict=True):  # every window rescored: fp32's labels throughout
        assert [(e["entity"], e["start"]) for e in mine] == [(e["entity"], e["start"]) for e in theirs]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_exports_a_token_classifier(ner_model, tmp_path, monkeypatch, precision):
    monkeypatch.setenv("BATCHNLP_CACHE", str(tmp_path))
    texts = review_texts()[:20]
    task = make_task(ner_model, backend="onnxruntime", precision=precision, rescore_margin=0.99)
    column, stats = task.annotate(texts)
    assert task.engine.backends[str(ner_model)] == "onnxruntime"
    expected = make_task(ner_model).annotate(texts)[0].to_pylist()  # torch, fp32
    for got, want in zip(column.to_pylist(), expected, strict=True):  # int8: every window rescored in fp32
        assert [{**e, "score": 0} for e in got] == [{**e, "score": 0} for e in want]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=1e-4)
    assert stats.rescored == (len(texts) if precision == "int8" else 0)


def test_a_sequence_classifier_is_refused_with_both_kinds(tiny_model, tmp_path):
    with pytest.raises(
        ModelError, match=r"is a sequence classifier \(DistilBertForSequenceClassification.*needs a token"
    ):
        load_token_classifier(tiny_model, "my/sst2")
    with pytest.raises(ModelError, match="is a sequence classifier"):  # plan's task, without weights
        NamedEntities(spec_of(tiny_model), tiny_model, None, None)
    unnamed = shutil.copytree(tiny_model, tmp_path / "unnamed")  # no architectures: its weights tell
    config = json.loads((unnamed / "config.json").read_text())
    (unnamed / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    with pytest.raises(ModelError, match=r"not a token classifier: its safetensors has another head's pre_classifier"):
        load_token_classifier(unnamed, "my/sst2")


def test_an_encoder_without_a_head_is_refused(embed_model):
    with pytest.raises(ModelError, match=r"is an encoder without a head.*needs a token classifier"):
        load_token_classifier(embed_model, "my/encoder")


def test_ner_settings_are_validated():
    def problems(**settings) -> str:
        with pytest.raises(SpecError) as error:
            JobSpec.from_settings({"input": "a.jsonl", "output": "o/", **settings})
        return str(error.value)

    assert "aggregation of task 'ner' must be one of simple, first, average, max, none" in problems(
        tasks=["ner"], aggregation="mean"
    )
    assert "aggregation, redact apply to ner tasks only" in problems(
        tasks=["sentiment"], aggregation="first", redact=True
    )
    assert "task 'sentiment' (sentiment) does not take entities" in problems(
        tasks=[{"name": "sentiment", "entities": ["PER"]}]
    )
    assert "entities of task 'ner' must be entity group names" in problems(tasks=["ner"], entities=[1])
    assert "redact of task 'ner' must be true or false" in problems(tasks=["ner"], redact="yes")
    spec = JobSpec.from_settings({"input": "a.jsonl", "output": "o/", "tasks": ["ner"]}).tasks[0]
    assert (spec.model, spec.aggregation, spec.entities, spec.redact) == ("dslim/distilbert-NER", "simple", None, False)


def test_the_ner_settings_leave_other_jobs_fingerprints_as_they_were():
    """The hash main gave this job before ner's TaskSpec fields (computed there): --resume still matches."""
    tasks = ["sentiment", {"name": "topics", "task": "classify", "model": "my/topics", "top_k": 2}, "embed"]
    tasks.append({"name": "q", "task": "qa", "question": "Who?"})
    job = {"input": "in.jsonl", "output": "out/", "tasks": tasks, "models": {"sentiment": "my/sst2"}}
    before = "f6c3282029cedcd50acc946fcba186daeb949d94f0c2990e6be8280ac56783cd"
    assert JobSpec.from_settings(job).fingerprint() == before
    settings = JobSpec.from_settings({**job, "tasks": ["ner"], "models": {}, "redact": True}).settings()
    assert settings["tasks"] == [
        {"name": "ner", "task": "ner", "model": "dslim/distilbert-NER", "aggregation": "simple", "redact": True}
    ]


def test_an_input_that_has_the_redacted_column_already_is_refused(ner_model):
    from batchnlp.errors import InputError
    from batchnlp.execution.plan import check_columns

    job = {"input": "in.jsonl", "output": "out/", "tasks": ["ner"], "models": {"ner": str(ner_model)}, "redact": True}
    schema = pa.schema([("text", pa.string()), ("ner_redacted", pa.string())])
    with pytest.raises(InputError, match="the input already has a column 'ner_redacted'"):
        check_columns(JobSpec.from_settings(job), schema)


def test_plan_counts_every_window_of_a_long_text(ner_model):
    from batchnlp.execution.estimate import sequence_lengths

    task = NamedEntities(spec_of(ner_model), ner_model, None, 64)  # as plan builds it: tokenizer and config only
    text = " ".join(review_texts()[:5])
    lengths = sequence_lengths(task, {"text": text, "_error": None}, "text")
    tokens = len(task.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(lengths) > 3 and max(lengths) == 64
    assert sum(length - 2 for length in lengths) == tokens + task.stride * (len(lengths) - 1), "overlaps counted"


def test_a_task_named_as_another_task_s_redacted_column_is_refused():
    tasks = [{"name": "ner", "task": "ner", "redact": True}, {"name": "ner_redacted", "task": "sentiment"}]
    with pytest.raises(SpecError, match="task 'ner_redacted' has the name of a column task 'ner' writes"):
        JobSpec.from_settings({"input": "a.jsonl", "output": "o/", "tasks": tasks})
