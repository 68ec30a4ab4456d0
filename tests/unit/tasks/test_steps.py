"""The task contract's three steps, each on its own: ``preprocess`` gives the model inputs (qa's
windows), ``forward`` runs them through the engine in one length-sorted pass, ``postprocess``
turns known logits into the known column. A task built without an engine preprocesses, as
``batchnlp plan`` counts tokens, and holds no model.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchnlp.execution.estimate import sequence_lengths
from batchnlp.inference.batching import token_budget_batches
from batchnlp.inference.engine import Engine
from batchnlp.spec import TaskSpec
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.classify import Classify
from batchnlp.tasks.qa import QuestionAnswering
from tests.support import corpus

TOPICS = ["world", "sports", "business", "science", "arts"]


def qa_task(model_dir, engine: Engine | None = None, max_length: int | None = None, **qa) -> QuestionAnswering:
    spec = TaskSpec(name="qa", kind="qa", model=str(model_dir), question_column="q", max_answer_length=15, **qa)
    return QuestionAnswering(spec, model_dir, engine, max_length)


def filler(words: int) -> str:
    return " ".join(["alpha", "beta", "gamma", "delta"] * (words // 4))


# ------------------------------------------------------------------ preprocess


def test_qa_preprocess_cuts_a_long_row_into_overlapping_windows_each_with_the_question(qa_model):
    """Windows of 32 tokens overlapping by a doc_stride of 8: each is [CLS] question [SEP] a slice of
    the context [SEP]; the slices cover the context, each starting 8 tokens before the last one ended."""
    task = qa_task(qa_model, max_length=32, doc_stride=8)
    long, short = filler(80), "John signed."
    inputs = task.preprocess([long, short], pa.table({"q": ["who signed it?", "who?"]}))
    tok = task.tokenizer
    question = tok("who signed it?", add_special_tokens=False)["input_ids"]
    context = tok(long, add_special_tokens=False)["input_ids"]
    head = [tok.cls_token_id, *question, tok.sep_token_id]
    windows = [ids for ids, row in zip(inputs.input_ids, inputs.rows, strict=True) if row == 0]
    assert len(windows) > 2, "the row must need several windows"
    assert all(ids[: len(head)] == head and ids[-1] == tok.sep_token_id for ids in windows)
    assert all(len(ids) <= 32 for ids in inputs.input_ids)
    slices = [ids[len(head) : -1] for ids in windows]
    start = 0
    for piece in slices:
        assert piece == context[start : start + len(piece)]
        start += len(piece) - 8
    assert start + 8 == len(context), "the last window ends the context"
    assert inputs.rows.tolist() == [0] * len(windows) + [1], "each window names its row; the short row has one"
    assert inputs.contexts == [long, short]
    assert inputs.token_type_ids is None, "DistilBERT's tokenizer gives no segment ids"


def test_qa_preprocess_of_the_spec_question_ignores_the_rows(qa_model):
    spec = TaskSpec(name="qa", kind="qa", model=str(qa_model), question="Who paid?", max_answer_length=15)
    task = QuestionAnswering(spec, qa_model, None, None)
    inputs = task.preprocess(["Acme paid."])
    assert inputs.input_ids == [task.tokenizer("Who paid?", "Acme paid.")["input_ids"]]


def test_classify_preprocess_truncates_to_max_length_and_keeps_order(tiny_model):
    spec = TaskSpec(name="t", kind="sentiment", model=str(tiny_model))
    task = Classify(spec, tiny_model, None, 16)
    texts = [filler(100), "good", ""]
    inputs = task.preprocess(texts)
    assert [len(ids) for ids in inputs.input_ids] == [16, 3, 2]
    assert inputs.input_ids[1] == task.tokenizer("good")["input_ids"]
    assert task.preprocess([]).input_ids == []


def test_a_task_without_an_engine_holds_no_model_and_preprocesses_as_one_with_it(qa_model):
    """What the estimate builds: tokenizer and config only, the same inputs as the worker's task."""
    planned = qa_task(qa_model)
    running = qa_task(qa_model, Engine("cpu", "fp32", 4096))
    assert planned.model is None and running.model is not None
    texts = corpus.texts(20, seed=3, max_sentences=12)
    rows = pa.table({"q": ["Who is the buyer?"] * len(texts)})
    assert planned.preprocess(texts, rows).input_ids == running.preprocess(texts, rows).input_ids
    row = {"text": texts[0], "q": "Who is the buyer?", "_error": None}
    windows = running.preprocess(texts[:1], rows.slice(0, 1)).input_ids
    assert sequence_lengths(planned, row, "text") == [len(ids) for ids in windows]


# ------------------------------------------------------------------ forward


def test_forward_runs_every_window_of_the_unit_in_one_length_sorted_pass(qa_model):
    """Windows of all rows share batches: the engine's batch count over all of them, not one call per
    row or window; one output per window, in window order, its start and end logits."""
    engine = Engine("cpu", "fp32", 1024)
    task = qa_task(qa_model, engine, max_length=48, doc_stride=16)
    texts = corpus.texts(30, seed=8, max_sentences=10)
    inputs = task.preprocess(texts, pa.table({"q": ["Who is the buyer?"] * len(texts)}))
    lengths = [len(ids) for ids in inputs.input_ids]
    assert len(lengths) > len(texts), "some rows need several windows"
    outputs, stats = task.forward(inputs)
    assert stats.batches == len(token_budget_batches(lengths, 1024, engine.pad_multiple)) < len(texts)
    assert stats.tokens == sum(lengths)
    assert [out.shape[1] for out in outputs] == [2] * len(lengths)
    assert all(out.shape[0] >= n for out, n in zip(outputs, lengths, strict=True))
    alone, _ = task.forward(ModelInputs(input_ids=[inputs.input_ids[-1]]))
    np.testing.assert_allclose(outputs[-1][: lengths[-1]], alone[0][: lengths[-1]], atol=1e-5)


def test_classify_forward_gives_a_logits_matrix_in_text_order(topics_model):
    task = Classify(
        TaskSpec(name="t", kind="classify", model=str(topics_model)), topics_model, Engine("cpu", "fp32", 512), None
    )
    texts = [filler(200), "short", filler(20)]
    logits, _ = task.forward(task.preprocess(texts))
    assert logits.shape == (3, len(TOPICS))
    one, _ = task.forward(task.preprocess(texts[1:2]))
    np.testing.assert_allclose(logits[1], one[0], atol=1e-5)


# ------------------------------------------------------------------ postprocess


def test_classify_postprocess_of_known_logits(topics_model):
    spec = TaskSpec(name="t", kind="classify", model=str(topics_model), top_k=2, keep_probs=True)
    task = Classify(spec, topics_model, None, None)
    logits = np.array([[0.0, 2.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    got = task.postprocess(ModelInputs(input_ids=[[], []]), logits).to_pylist()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert [row["label"] for row in got] == ["sports", "world"]
    assert [item["label"] for item in got[0]["top_k"]] == ["sports", "business"]
    np.testing.assert_allclose([row["score"] for row in got], probs.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(got[0]["probs"], probs[0], rtol=1e-6)


def test_multi_label_postprocess_scores_each_label_by_sigmoid(multilabel_model):
    spec = TaskSpec(name="t", kind="classify", model=str(multilabel_model), top_k=4)
    task = Classify(spec, multilabel_model, None, None)
    got = task.postprocess(ModelInputs(input_ids=[[]]), np.array([[0.0, 2.0, -1.0, 0.0]], np.float32)).to_pylist()
    assert got[0]["label"] == "quality"
    np.testing.assert_allclose([i["score"] for i in got[0]["top_k"]], 1 / (1 + np.exp(-np.array([2.0, 0, 0, -1]))))


@pytest.mark.parametrize("place", ["first-window", "overlap"])
def test_qa_postprocess_of_known_logits_gives_the_known_span(qa_model, place):
    """Logit 8 on "john" (start) and "smith" (end) in every window that holds them: the answer is their
    words' characters; in the overlap of two windows, both windows' scores add up."""
    task = qa_task(qa_model, max_length=32, doc_stride=8)
    before = 4 if place == "first-window" else 20  # tokens 20-21 sit in windows 0-24 and 17-41
    context = filler(before) + " John Smith " + filler(40)
    inputs = task.encode([context], ["Who signed it?"])
    john, smith = task.tokenizer.convert_tokens_to_ids(["john", "smith"])
    logits = []
    for ids in inputs.input_ids:
        window = np.zeros((len(ids) + 3, 2), np.float32)  # padded past the window, as forward gives it
        window[: len(ids), 0] = np.where(np.array(ids) == john, 8.0, 0.0)
        window[: len(ids), 1] = np.where(np.array(ids) == smith, 8.0, 0.0)
        logits.append(window)
    holding = sum(john in ids and smith in ids for ids in inputs.input_ids)
    assert holding == (1 if place == "first-window" else 2)
    got = task.postprocess(inputs, logits).to_pylist()
    assert got[0]["answer"] == "John Smith" and context[got[0]["start"] : got[0]["end"]] == "John Smith"
    assert (got[0]["score"] > 1.0) is (holding == 2)


def test_postprocess_of_no_rows_is_an_empty_column(qa_model):
    task = qa_task(qa_model)
    inputs = task.encode([], [])
    assert inputs.input_ids == [] and len(task.postprocess(inputs, [])) == 0


# ------------------------------------------------------------------ the contract


class FirstLogit(Task):
    """A task that implements only the required steps: the default forward and head do the rest."""

    loader = staticmethod(Classify.loader)

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> ModelInputs:
        return ModelInputs(input_ids=[self.tokenizer(text)["input_ids"] for text in texts])

    def postprocess(self, inputs: ModelInputs, outputs: list[np.ndarray]) -> pa.Array:
        return pa.array([float(row[0]) for row in outputs], pa.float32())


def test_a_task_of_preprocess_and_postprocess_alone_annotates_through_the_default_forward(topics_model):
    engine = Engine("cpu", "fp32", 4096)
    spec = TaskSpec(name="t", kind="classify", model=str(topics_model))
    texts = [filler(40), "fine", filler(8)]
    column, stats = FirstLogit(spec, topics_model, engine, None).annotate(texts)
    classify = Classify(spec, topics_model, engine, None)
    logits, _ = classify.forward(classify.preprocess(texts))
    np.testing.assert_allclose(column.to_numpy(), logits[:, 0], atol=1e-6)
    assert stats.tokens == sum(len(classify.tokenizer(text)["input_ids"]) for text in texts)
