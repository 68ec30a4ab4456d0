"""The encoder families users bring, each as a tiny random checkpoint made here, through the same
loading and task code the workers run: every family's sequence classifier and QA head.

DeBERTa-v2/v3 have no SDPA attention in transformers and used to fail to load; they now fall back
to eager attention. Each family's tokenizer passes ``token_type_ids`` only where its real tokenizer
does (BERT, ELECTRA, DeBERTa-v2): RoBERTa and XLM-R have a single token type, and handing them
segment ids of 1 would index past their type embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import transformers

from batchnlp.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.classify import Classify
from batchnlp.tasks.columns import ANSWER
from batchnlp.tasks.qa import QuestionAnswering
from batchnlp.testing import vocabulary_dir

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
WITH_TYPES = ["input_ids", "token_type_ids", "attention_mask"]
WITHOUT_TYPES = ["input_ids", "attention_mask"]
# family → (config class, its settings, the inputs its real tokenizer gives)
FAMILIES = {
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}, WITHOUT_TYPES),
    "bert": ("BertConfig", TINY, WITH_TYPES),
    "roberta": ("RobertaConfig", {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, WITHOUT_TYPES),
    "xlm-roberta": ("XLMRobertaConfig", {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, WITHOUT_TYPES),
    "electra": ("ElectraConfig", {**TINY, "embedding_size": 16}, WITH_TYPES),
    "deberta-v2": ("DebertaV2Config", {**TINY, "type_vocab_size": 2}, WITH_TYPES),
    "modernbert": ("ModernBertConfig", {**TINY, "global_attn_every_n_layers": 2, "local_attention": 64}, WITHOUT_TYPES),
}
HEADS = {"classify": "ForSequenceClassification", "qa": "ForQuestionAnswering"}
TEXTS = ["a short review", "", "   ", "long " * 700, "the buyer, Acme Ltd, pays within thirty days"]


def build(dest: Path, family: str, head: str) -> Path:
    """A random ``family`` model with ``head``, and a fast WordPiece tokenizer giving the family's inputs."""
    config_name, settings, inputs = FAMILIES[family]
    tokenizer = transformers.AutoTokenizer.from_pretrained(vocabulary_dir(), model_input_names=inputs)
    tokenizer.model_max_length = 512
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id}
    config = getattr(transformers, config_name)(
        vocab_size=tokenizer.vocab_size, id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1},
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
    caplog.set_level(logging.INFO, logger="batchnlp.models")
    if head == "classify":
        task = Classify(TaskSpec(name="label", kind="classify", model=family, top_k=2), directory, engine, 128)
        column, _ = task.annotate(TEXTS)
        empty, _ = task.annotate([])
        assert column.type == task.output_type and len(empty) == 0
        assert all(row["label"] in ("NEG", "POS") for row in column.to_pylist())
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
