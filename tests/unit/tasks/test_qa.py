"""qa: batched windows and vectorised span search give transformers 4.x's pipeline answers.

The oracle is ``qa_reference``, a port of the 4.x pipeline that runs one window at a time.
Random weights give arbitrary spans, which is enough for fidelity (both sides use the same
weights); hand-built logits pin the behaviour a user can reason about.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from batchnlp.errors import SpecError
from batchnlp.inference.engine import Engine
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks.qa import QuestionAnswering
from batchnlp.tasks.spans import best_spans
from batchnlp.testing import build_question_answerer, vocabulary_dir
from tests.support import corpus
from tests.unit.tasks.qa_reference import pipeline_answer

QUESTIONS = [
    "Who is the buyer?",
    "What is the price?",
    "How long does the battery last?",
    "Où est le café ?",
    "誰が買いましたか？",
    "Was the soup cold?",
]


def make_task(model_dir, max_length=None, backend="auto", **qa) -> QuestionAnswering:
    settings = {"question_column": "question", "max_answer_length": 15, **qa}
    spec = TaskSpec(name="qa", kind="qa", model=str(model_dir), **settings)
    engine = Engine("cpu", "fp32", 4096, backend=backend)
    task = QuestionAnswering(spec, model_dir, engine, max_length)
    assert backend == "auto" or engine.backends[str(model_dir)] == backend
    return task


def reference(task: QuestionAnswering, questions, contexts, **settings) -> list[dict]:
    settings.setdefault("max_seq_len", task.max_length)
    settings.setdefault("doc_stride", task.doc_stride)
    return [
        pipeline_answer(task.model, task.tokenizer, q, c, **settings) for q, c in zip(questions, contexts, strict=True)
    ]


def assert_same_answers(got: list[dict], expected: list[dict]) -> float:
    """Text, start and end equal; scores within 1e-4. Returns the largest score difference."""
    assert [(g["answer"], g["start"], g["end"]) for g in got] == [(e["answer"], e["start"], e["end"]) for e in expected]
    differences = [abs(g["score"] - e["score"]) for g, e in zip(got, expected, strict=True)]
    assert max(differences) < 1e-4
    return max(differences)


def windows(task: QuestionAnswering, question: str, context: str) -> int:
    encoded = task.tokenizer(
        question, context, truncation="only_second", max_length=task.max_length, stride=task.doc_stride,
        return_overflowing_tokens=True,
    )  # fmt: skip
    return len(encoded["input_ids"])


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    """300 (question, context) pairs, a third of them long enough for several 384-token windows."""
    rng = random.Random(5)
    contexts = corpus.texts(200, seed=5) + [
        " ".join(corpus.texts(40, seed=seed, max_sentences=8)) for seed in range(100)
    ]
    return [rng.choice(QUESTIONS) for _ in contexts], contexts


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_answers_match_the_pipeline_with_its_defaults(qa_model, pairs, backend):
    questions, contexts = pairs
    task = make_task(qa_model, backend=backend)
    assert (task.max_length, task.doc_stride) == (384, 128)
    multi = sum(windows(task, q, c) > 1 for q, c in zip(questions, contexts, strict=True))
    assert multi >= 100, "the corpus must exercise multi-window contexts"

    column, stats = task.answer(contexts, questions)
    got = column.to_pylist()
    assert_same_answers(got, reference(task, questions, contexts))
    assert all(c[g["start"] : g["end"]] == g["answer"] for g, c in zip(got, contexts, strict=True))
    assert stats.padded_tokens < stats.tokens * 1.15, "windows of all rows share length-sorted batches"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("cased", [False, True])
def test_many_small_windows_match_the_pipeline(tmp_path, cased, backend):
    """Windows of 48 tokens overlapping by 16: answers near and across every window edge."""
    model = build_question_answerer(tmp_path / "qa", cased=cased, seed=3)
    task = make_task(model, max_length=48, doc_stride=16, backend=backend)
    rng = random.Random(9)
    contexts = corpus.texts(80, seed=9, max_sentences=12)
    questions = [rng.choice(QUESTIONS) for _ in contexts]
    got = task.answer(contexts, questions)[0].to_pylist()
    assert_same_answers(got, reference(task, questions, contexts))
    assert all(c[g["start"] : g["end"]] == g["answer"] for g, c in zip(got, contexts, strict=True))


def test_models_with_token_types_get_them(tmp_path):
    """BERT tells question from context by segment ids; they are passed where its tokenizer gives them."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    tokenizer = AutoTokenizer.from_pretrained(vocabulary_dir())  # bert-base-uncased's: with token_type_ids
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    task = make_task(tmp_path / "bert", max_length=64, doc_stride=16)
    assert task.token_types
    contexts = corpus.texts(40, seed=4, max_sentences=10)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(contexts))]
    assert_same_answers(task.answer(contexts, questions)[0].to_pylist(), reference(task, questions, contexts))


class PointingModel:
    """Hand-built logits: a chosen start and end logit per token id, 0 for every other token."""

    def __init__(self, starts: dict[int, float], ends: dict[int, float], null: float = 0.0) -> None:
        self.starts, self.ends, self.null = starts, ends, null

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        start, end = torch.zeros(input_ids.shape), torch.zeros(input_ids.shape)
        for logits, chosen in ((start, self.starts), (end, self.ends)):
            for token_id, logit in chosen.items():
                logits[input_ids == token_id] = logit
        start[:, 0] = end[:, 0] = self.null  # CLS: the "no answer" logit
        return SimpleNamespace(start_logits=start, end_logits=end)

    __call__ = forward


def pointed(
    qa_model, start: str | dict[str, float], end: str | dict[str, float], null: float = 0.0, **settings
) -> QuestionAnswering:
    """A task whose model puts logit 8 on the ``start`` and ``end`` tokens, or the logits given per token."""
    task = make_task(qa_model, **settings)

    def by_id(chosen: str | dict[str, float]) -> dict[int, float]:
        logits = {chosen: 8.0} if isinstance(chosen, str) else chosen
        return {task.tokenizer.convert_tokens_to_ids(token): logit for token, logit in logits.items()}

    task.model = PointingModel(by_id(start), by_id(end), null=null)
    return task


@pytest.mark.parametrize(
    "context, start, end, answer",
    [
        ("The buyer is John Smith of Leeds.", "john", "smith", "John Smith"),
        # The start token is inside a word: the answer widens to whole words, accents kept.
        ("The dessert was crème brûlée, served cold.", "##eme", "##ule", "crème brûlée"),
        ("買い手は東京商事です。", "東", "事", "東京商事"),
    ],
    ids=["known-span", "accents-and-word-pieces", "cjk"],
)
def test_a_known_best_span_maps_to_exact_characters(qa_model, context, start, end, answer):
    task = pointed(qa_model, start, end)
    got = task.answer([context], ["Who is the buyer?"])[0].to_pylist()
    assert got[0]["answer"] == answer and context[got[0]["start"] : got[0]["end"]] == answer
    assert got[0]["start"] == context.index(answer[0])
    assert_same_answers(got, reference(task, ["Who is the buyer?"], [context]))


def filler(words: int) -> str:
    return " ".join(["alpha", "beta", "gamma", "delta"] * (words // 4))


def test_an_answer_across_a_window_boundary_is_found_in_the_next_window(qa_model):
    """Windows of 32 tokens with a 4-token question: context tokens 0-24, then 17-41, 34-58..."""
    context = filler(24) + " John Smith signed " + filler(40)
    task = pointed(qa_model, "john", "smith", max_length=32, doc_stride=8)
    first = task.tokenizer(context, add_special_tokens=False, max_length=25, truncation=True)["input_ids"]
    assert (
        task.tokenizer.convert_tokens_to_ids("john") in first
        and task.tokenizer.convert_tokens_to_ids("smith") not in first
    ), "the answer must straddle the first window's end"
    got = task.answer([context], ["Who signed it?"])[0].to_pylist()
    assert got[0]["answer"] == "John Smith" and got[0]["start"] == context.index("John")
    assert_same_answers(got, reference(task, ["Who signed it?"], [context]))


def test_an_answer_in_the_overlap_of_two_windows_adds_both_scores(qa_model):
    context = filler(20) + " John Smith " + filler(40)  # tokens 20 and 21: in windows 0-24 and 17-41
    task = pointed(qa_model, "john", "smith", max_length=32, doc_stride=8)
    assert windows(task, "Who signed it?", context) > 2
    got = task.answer([context], ["Who signed it?"])[0].to_pylist()
    assert got[0]["answer"] == "John Smith" and got[0]["start"] == context.index("John")
    assert got[0]["score"] > 1.0, "the pipeline sums the scores of equal answers from different windows"
    assert_same_answers(got, reference(task, ["Who signed it?"], [context]))


def test_spans_that_widen_to_the_same_words_add_their_scores(qa_model):
    """4.57 keeps 12 spans per window: every span that widens to "crème brûlée" counts, not the best one alone.

    The best span, (##eme, ##e), holds about 0.73; starting at "cr" or ending on "br" or "##ule"
    gives the same words, so the answer's score is nearly 1 (4.53 and earlier said 0.73).
    """
    context = "The dessert was crème brûlée, served cold."
    task = pointed(qa_model, {"cr": 7.0, "##eme": 8.0}, {"##e": 8.0})
    got = task.answer([context], ["What was served?"])[0].to_pylist()
    assert got[0]["answer"] == "crème brûlée" and got[0]["start"] == context.index("crème")
    assert got[0]["score"] > 0.99
    assert_same_answers(got, reference(task, ["What was served?"], [context]))


def test_answers_differing_only_in_case_add_their_scores_and_keep_the_first(tmp_path):
    """The cased tokenizer reads "Smith" as [UNK] and "smith" as smith: two spans, one answer ignoring case.

    Each alone scores under 0.4 (max_answer_length 3 keeps them apart); their sum is the score,
    and the text and place are those of the better span.
    """
    model = build_question_answerer(tmp_path / "cased", cased=True)
    context = "ask Smith first, then ask not smith."
    task = pointed(model, {"[UNK]": 8.0, "smith": 7.5}, {"[UNK]": 8.0, "smith": 7.5}, max_answer_length=3)
    got = task.answer([context], ["who is it?"])[0].to_pylist()
    assert (got[0]["answer"], got[0]["start"]) == ("Smith", context.index("Smith"))
    assert got[0]["score"] > 0.5
    assert_same_answers(got, reference(task, ["who is it?"], [context]))


@pytest.mark.parametrize("seed", range(6))
def test_the_issues_one_window_example_matches_the_pipeline(tmp_path, seed):
    """The context of the bug report, whose word pieces let several spans spell one answer."""
    model = build_question_answerer(tmp_path / "qa", seed=seed)
    task = make_task(model)
    contexts, questions = ["getnameinfo(sockaddr, flags) --> (host, port)"], ["What does it return?"]
    got = task.answer(contexts, questions)[0].to_pylist()
    assert_same_answers(got, reference(task, questions, contexts))


def test_a_context_shorter_than_the_question(qa_model):
    task = make_task(qa_model)
    questions = ["What did the customer say about the delivery, the packaging and the price of the order?"] * 3
    contexts = ["Fine.", "Too slow!", "東京"]
    got = task.answer(contexts, questions)[0].to_pylist()
    assert_same_answers(got, reference(task, questions, contexts))
    assert all(c[g["start"] : g["end"]] == g["answer"] and g["answer"] for g, c in zip(got, contexts, strict=True))


@pytest.mark.parametrize("null_logit, empty", [(12.0, True), (-5.0, False)])
def test_allow_no_answer_returns_the_empty_answer_when_the_null_score_wins(qa_model, null_logit, empty):
    context = filler(12) + " John Smith " + filler(60)
    task = pointed(qa_model, "john", "smith", null=null_logit, max_length=32, doc_stride=8, allow_no_answer=True)
    got = task.answer([context], ["Who signed it?"])[0].to_pylist()
    assert (got[0]["answer"] == "") is empty
    if empty:
        assert (got[0]["start"], got[0]["end"]) == (0, 0)
    assert_same_answers(got, reference(task, ["Who signed it?"], [context], handle_impossible_answer=True))
    plain = pointed(qa_model, "john", "smith", null=null_logit, max_length=32, doc_stride=8)
    assert plain.answer([context], ["Who signed it?"])[0].to_pylist()[0]["answer"] == "John Smith"


def test_span_search_bounds_answer_length_and_breaks_ties_by_position():
    logits = np.zeros((2, 8, 2), np.float32)
    logits[0, 2, 0] = logits[0, 7, 1] = 9.0  # best start and end are 6 tokens apart
    logits[0, 3, 1] = 4.0
    logits[1, [2, 5], 0] = logits[1, [3, 6], 1] = 6.0  # two equal spans: (2, 3) and (5, 6)
    allowed = np.ones((2, 8), bool)
    allowed[:, 1] = False  # a question token never starts or ends an answer
    spans = best_spans(logits, np.array([8, 8]), allowed, max_answer_length=4)
    assert spans.starts[:, 0].tolist() == [2, 2] and spans.ends[:, 0].tolist() == [3, 3]
    assert (spans.starts[1, 1], spans.ends[1, 1]) == (5, 6), "the equal span comes second"
    assert spans.kept[:, :2].all() and spans.starts.shape == (2, 12)
    assert (np.diff(spans.scores, axis=1) <= 0).all(), "best first"
    longer = best_spans(logits, np.array([8, 8]), allowed, max_answer_length=6)
    assert (longer.starts[0, 0], longer.ends[0, 0]) == (2, 7)


def test_row_problems_name_bad_questions(qa_model):
    task = make_task(qa_model, max_length=32, doc_stride=8)
    table = pa.table({"text": ["a"] * 4, "question": ["Who?", None, "  ", "why " * 30]})
    problems = task.row_problems(table)
    assert problems[:3] == [None, "question is null", "question is empty or whitespace"]
    assert problems[3].startswith("question is 30 tokens")
    assert task.row_problems(pa.table({"text": ["a"]})) == ["no 'question' field"]
    assert "not a string" in task.row_problems(pa.table({"text": ["a"], "question": [1]}))[0]
    fixed = make_task(qa_model, question="Who?", question_column=None)
    assert fixed.row_problems(table) == [None] * 4
    column, _ = fixed.annotate(["The buyer is John."])
    assert column.type == pa.struct(
        [("answer", pa.string()), ("score", pa.float32()), ("start", pa.int32()), ("end", pa.int32())]
    )


def test_named_questions_from_a_spec_and_their_validation():
    spec = JobSpec.from_settings({
        "input": "in.jsonl", "output": "out/", "models": {"party": "m", "price": "m"},
        "tasks": [{"name": "party", "task": "qa", "question": "Who is the buyer?"},
                  {"name": "price", "task": "qa", "question": "What is the price?", "max_answer_length": 5}],
    })  # fmt: skip
    assert [(t.name, t.question, t.max_answer_length) for t in spec.tasks] == [
        ("party", "Who is the buyer?", 15),
        ("price", "What is the price?", 5),
    ]
    with pytest.raises(SpecError) as error:
        JobSpec.from_settings({
            "input": "in.jsonl", "output": "out/", "models": {"qa": "m", "sentiment": "m"}, "doc_stride": 400,
            "max_length": 384, "tasks": ["qa", {"name": "sentiment", "question": "Why?", "colour": 1}],
        })  # fmt: skip
    message = str(error.value)
    for fragment in (
        "task 'qa' (qa) needs exactly one of question",
        "doc_stride of task 'qa' must be less than max_length",
        "task 'sentiment' (sentiment) does not take question",
        "unknown key 'colour'",
    ):
        assert fragment in message
    with pytest.raises(SpecError, match="apply to qa tasks only"):
        JobSpec.from_settings({"input": "i", "output": "o", "question": "Why?", "models": {"sentiment": "m"}})
