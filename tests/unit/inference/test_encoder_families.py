"""The encoder families users bring, each as a tiny random checkpoint made here, through the same
loading and task code the workers run: every family's sequence classifier and QA head.

Each family gets the kind of tokenizer its real checkpoints ship, built in-process: WordPiece for
DistilBERT, BERT and ELECTRA (the real bert-base-uncased vocabulary), byte-level BPE for RoBERTa
and ModernBERT, SentencePiece Unigram for XLM-R and DeBERTa-v2, each with its family's special
tokens, pair template and inputs. So QA's character offsets are checked on the offsets each kind
gives (the DeBERTa-v2 and ModernBERT ones count a word's leading space into its first piece), and
``token_type_ids`` reach only the families whose tokenizers give them: RoBERTa and XLM-R have a
single token type, and segment ids of 1 would index past their type embedding.

DeBERTa-v2/v3 have no SDPA attention in transformers and used to fail to load; they now fall back
to eager attention.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
from tokenizers.processors import TemplateProcessing

from batchnlp.execution.worker import ModelPlugin, ModelSettings
from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify
from batchnlp.tasks.columns import ANSWER
from batchnlp.tasks.ner import NamedEntities
from batchnlp.tasks.qa import QuestionAnswering
from batchnlp.testing import vocabulary_dir

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
HEADS = {"classify": "ForSequenceClassification", "qa": "ForQuestionAnswering", "ner": "ForTokenClassification"}
TEXTS = [
    "a short review",
    "",
    "   ",
    "long " * 700,
    "the buyer, Acme Ltd, pays within thirty days",
    "  Café Ünïcode: 1,200 EUR — paid\tby the buyer ✓ ",
]
# What the BPE and Unigram vocabularies are trained on: the texts' words, and more to merge.
CORPUS = [text for text in TEXTS if text.strip()] * 3 + [
    "who pays? the seller delivers the goods by thirty June",
    "a great product, a short and long review of the buyer",
]


def wordpiece(inputs: list[str]) -> Any:
    """bert-base-uncased's WordPiece, giving ``inputs`` (DistilBERT's tokenizers give no token_type_ids)."""
    return transformers.AutoTokenizer.from_pretrained(vocabulary_dir(), model_input_names=inputs)


@cache
def byte_level_bpe(specials: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]], Any]:
    """(vocabulary, merges, the trained tokenizer) of a byte-level BPE whose first ids are ``specials``."""
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=1, special_tokens=list(specials), show_progress=False
    )
    model = json.loads(trained.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]], trained


@cache
def unigram(specials: tuple[str, ...], unknown: str) -> list[tuple[str, float]]:
    """The (piece, score) list of a SentencePiece Unigram whose first pieces are ``specials``."""
    trained = SentencePieceUnigramTokenizer()
    trained.train_from_iterator(
        CORPUS, vocab_size=200, special_tokens=list(specials), unk_token=unknown, show_progress=False
    )
    return [tuple(piece) for piece in json.loads(trained.to_str())["model"]["vocab"]]


def roberta() -> Any:
    """As roberta-base's: byte-level BPE, ``<s> A </s></s> B </s>``, no token types."""
    vocab, merges, _ = byte_level_bpe(("<s>", "<pad>", "</s>", "<unk>", "<mask>"))
    return transformers.RobertaTokenizer(vocab=vocab, merges=merges)


def xlm_roberta() -> Any:
    """As xlm-roberta-base's: SentencePiece Unigram with RoBERTa's special tokens and template."""
    return transformers.XLMRobertaTokenizer(vocab=unigram(("<s>", "<pad>", "</s>", "<unk>", "<mask>"), "<unk>"))


def deberta_v2() -> Any:
    """As deberta-v3-base's: SentencePiece Unigram, ``[CLS] A [SEP] B [SEP]`` with token types."""
    return transformers.DebertaV2Tokenizer(
        vocab=unigram(("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"), "[UNK]"), unk_id=3
    )


def modernbert() -> Any:
    """As ModernBERT-base's: a plain fast tokenizer, byte-level BPE in BERT's template, no token types."""
    specials = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
    trained = byte_level_bpe(specials)[2]._tokenizer
    trained.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    names = dict(zip(("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"), specials, strict=True))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=trained, model_input_names=["input_ids", "attention_mask"], **names
    )


WITH_TYPES = ["input_ids", "token_type_ids", "attention_mask"]
# family → (config class, its settings, its tokenizer)
FAMILIES = {
    "distilbert": (
        "DistilBertConfig",
        {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
        lambda: wordpiece(["input_ids", "attention_mask"]),
    ),
    "bert": ("BertConfig", TINY, lambda: wordpiece(WITH_TYPES)),
    "roberta": ("RobertaConfig", {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, roberta),
    "xlm-roberta": ("XLMRobertaConfig", {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, xlm_roberta),
    "electra": ("ElectraConfig", {**TINY, "embedding_size": 16}, lambda: wordpiece(WITH_TYPES)),
    "deberta-v2": ("DebertaV2Config", {**TINY, "type_vocab_size": 2}, deberta_v2),
    "modernbert": ("ModernBertConfig", {**TINY, "global_attn_every_n_layers": 2, "local_attention": 64}, modernbert),
}


def build(dest: Path, family: str, head: str, layers: int | None = None) -> Path:
    """A random ``family`` model with ``head`` (and ``layers`` encoder blocks, else 2) and its family's
    kind of tokenizer, saved to ``dest``."""
    config_name, settings, make_tokenizer = FAMILIES[family]
    if layers:
        settings = {**settings, "n_layers" if family == "distilbert" else "num_hidden_layers": layers}
    tokenizer = make_tokenizer()
    tokenizer.model_max_length = 512
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1},
        **special, **{"max_position_embeddings": 512, **settings},
    )  # fmt: skip
    model_class = getattr(transformers, config_name.removesuffix("Config") + HEADS[head])
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loads_and_annotates_through_the_task_code(tmp_path, family, head, caplog):
    directory = build(tmp_path / family, family, head)
    engine = Engine("cpu", "fp32", 4096)
    caplog.set_level(logging.INFO, logger="batchnlp.inference.models")
    if head == "classify":
        task = Classify(TaskSpec(name="label", kind="classify", model=family, top_k=2), directory, engine, 128)
        column, _ = task.annotate(TEXTS)
        empty, _ = task.annotate([])
        assert column.type == task.output_type and len(empty) == 0
        assert all(row["label"] in ("NEG", "POS") for row in column.to_pylist())
    elif head == "ner":
        spec = TaskSpec(name="ner", kind="ner", model=family, aggregation="first")
        task = NamedEntities(spec, directory, engine, 128)
        column, _ = task.annotate(TEXTS)
        assert column.type == task.output_type and len(task.annotate([])[0]) == 0
        for text, found in zip(TEXTS, column.to_pylist(), strict=True):
            assert all(0 <= e["start"] < e["end"] <= len(text) and e["entity"] in ("NEG", "POS") for e in found)
    else:
        spec = TaskSpec(name="answer", kind="qa", model=family, question_column="question", max_answer_length=15)
        task = QuestionAnswering(spec, directory, engine, 128)
        questions = pa.table({"question": ["who pays?"] * len(TEXTS)})
        column, _ = task.annotate(TEXTS, questions)
        empty, _ = task.annotate([], questions.slice(0, 0))
        assert column.type == ANSWER and len(empty) == 0
        for text, answer in zip(TEXTS, column.to_pylist(), strict=True):
            assert answer["answer"] == text[answer["start"] : answer["end"]]
    assert len(column) == len(TEXTS)
    eager = [r for r in caplog.records if "eager attention" in r.getMessage()]
    assert len(eager) == (family == "deberta-v2"), "the fallback is said once, and only where it is taken"


def test_the_eager_attention_fallback_is_said_once_per_checkpoint(tmp_path, caplog):
    directory = build(tmp_path / "deberta", "deberta-v2", "classify")
    caplog.set_level(logging.INFO, logger="batchnlp.inference.models")
    for engine in (Engine("cpu", "fp32"), Engine("cpu", "fp32")):  # two worker plugins in one process
        Classify(TaskSpec(name="label", kind="classify", model="deberta"), directory, engine, 128)
    assert len([r for r in caplog.records if "eager attention" in r.getMessage()]) == 1


def test_tasks_on_one_checkpoint_share_one_loaded_model(qa_model, tiny_model):
    """Three questions of one QA model were three copies of it on every worker."""
    engine = Engine("cpu", "fp32", 4096)
    questions = [
        QuestionAnswering(TaskSpec(name=f"q{i}", kind="qa", model="m", question=q), qa_model, engine, None)
        for i, q in enumerate(["Who?", "When?", "Where?"])
    ]
    assert questions[0].model is questions[1].model is questions[2].model
    labels = [Classify(TaskSpec(name=n, kind="classify", model="m"), tiny_model, engine, None) for n in ("a", "b")]
    assert labels[0].model is labels[1].model and labels[0].model is not questions[0].model
    other = QuestionAnswering(
        TaskSpec(name="q", kind="qa", model="m", question="Who?"), qa_model, Engine("cpu", "fp32"), None
    )
    assert other.model is not questions[0].model, "each engine (worker plugin) owns its models"


def test_a_worker_holds_one_copy_of_a_checkpoint_its_tasks_share(qa_model, monkeypatch):
    """Through the worker's own loading (ModelPlugin.load), with refs spelling the directory two ways."""
    monkeypatch.chdir(qa_model.parent)
    refs = [str(qa_model), f"./{qa_model.name}", str(qa_model)]
    specs = tuple(
        TaskSpec(name=f"q{i}", kind="qa", model=ref, question=question)
        for i, (ref, question) in enumerate(zip(refs, ["Who?", "When?", "Where?"], strict=True))
    )
    plugin = ModelPlugin(ModelSettings(specs, "cpu", "fp32", 4096, None, None, {}))
    plugin.load()
    first, second, third = (plugin.tasks[spec.name].model for spec in specs)
    assert first is second is third
