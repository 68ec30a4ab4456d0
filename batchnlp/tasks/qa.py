"""Extractive question answering: the span of each text that answers a question.

Answers and scores equal transformers 4.57.6's ``QuestionAnsweringPipeline`` (the last 4.x
release; 5.x has none) with the same checkpoint and settings: the question goes first (second for
left-padding tokenizers), long contexts are cut into windows of ``max_length`` tokens overlapping
by ``doc_stride``, the best 12 spans of each window are scored as in :mod:`batchnlp.tasks.spans`
and widened to whole words, and spans that give the same text (ignoring case), in one window or
several, add their scores: an answer's score is the sum over its token spans, its position the
first one's. (4.53 and earlier kept one span per window and did not sum within a window.)

Unlike the pipeline, which runs one window at a time, the windows of every row of a unit are
batched together by length through the shared :class:`~batchnlp.inference.engine.Engine`, and the span
search runs over whole chunks of windows at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import load_question_answerer
from batchnlp.tasks.base import ModelInputs, Task, value_problem
from batchnlp.tasks.columns import ANSWER
from batchnlp.tasks.spans import best_spans, word_bounds

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it

DEFAULT_MAX_LENGTH = 384  # the pipeline's max_seq_len
DEFAULT_DOC_STRIDE = 128
WINDOWS_PER_CHUNK = 512  # bounds the span search's memory: 512 × 384 × 15 floats ≈ 12 MB


@dataclass(kw_only=True)
class Windows(ModelInputs):
    """qa's model inputs: every window of every row (``input_ids``), and what decoding needs."""

    contexts: list[str]  # the rows' texts, which answers are cut from
    encoding: Any  # the tokenizer's BatchEncoding: offsets, sequence and word ids per window (None: no rows)
    rows: np.ndarray  # [windows]: the row each window belongs to

    def text_tokens(self) -> np.ndarray:
        """The tokens of every window of each text (the question once per window)."""
        return self.tokens_by_text(self.rows, len(self.contexts))


class QuestionAnswering(Task):
    """preprocess: question/context windows with ``doc_stride``; forward: start and end logits of
    every window, batched together; postprocess: the best span per row, summed over windows."""

    loader = staticmethod(load_question_answerer)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        super().__init__(spec, directory, engine, max_length)
        # The pipeline's defaults: windows of at most 384 tokens, overlapping by at most half a window.
        limits = [
            max_length or DEFAULT_MAX_LENGTH,
            self.tokenizer.model_max_length,
            self.config.max_position_embeddings,
        ]
        self.max_length = min(limit for limit in limits if limit)
        stride = spec.doc_stride
        self.doc_stride = min(self.max_length // 2, DEFAULT_DOC_STRIDE) if stride is None else stride
        self.question_first = self.tokenizer.padding_side == "right"
        self.context_index = 1 if self.question_first else 0
        # As the 4.x pipeline: segment ids only where the tokenizer gives them (BERT, not RoBERTa,
        # whose single token type would be indexed past by a question/context pair's 1s).
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names

    @property
    def input_columns(self) -> tuple[str, ...]:
        return (self.spec.question_column,) if self.spec.question_column else ()

    def row_problems(self, table: pa.Table) -> list[str | None]:
        """A question that is missing, blank, not a string, or too long to leave room for context."""
        if self.spec.question is not None:
            questions: list = [self.spec.question] * table.num_rows
        elif self.spec.question_column not in table.column_names:
            return [f"no {self.spec.question_column!r} field"] * table.num_rows
        else:
            column = table.column(self.spec.question_column)
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                problem = f"question column {self.spec.question_column!r} is {column.type}, not a string"
                return [problem] * table.num_rows
            questions = column.to_pylist()
        problems = [value_problem(question, "question") for question in questions]
        usable = [question for question, problem in zip(questions, problems, strict=True) if problem is None]
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - self.doc_stride
        distinct = list(dict.fromkeys(usable))  # a fixed question is tokenised once, not per row
        lengths = dict(zip(distinct, map(len, self._tokens(distinct)), strict=True))
        for i, problem in enumerate(problems):
            if problem is None and (length := lengths[questions[i]]) >= room:
                problems[i] = (
                    f"question is {length} tokens; with max_length {self.max_length} and doc_stride "
                    f"{self.doc_stride} it must be under {room}"
                )
        return problems

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> Windows:
        """The windows of each text with its question: the spec's, or the row's question column."""
        if self.spec.question is not None:
            questions = [self.spec.question] * len(texts)
        else:
            questions = rows.column(self.spec.question_column).to_pylist()
        return self.encode(texts, questions)

    def encode(self, contexts: list[str], questions: list[str]) -> Windows:
        """Each (question, context) pair cut into windows of ``max_length`` tokens overlapping by
        ``doc_stride``, the question in every window."""
        if not contexts:
            return Windows(input_ids=[], contexts=[], encoding=None, rows=np.zeros(0, np.int64))
        pairs = (questions, contexts) if self.question_first else (contexts, questions)
        encoded = self.tokenizer(
            *pairs,
            truncation="only_second" if self.question_first else "only_first",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=self.token_types,
        )
        return Windows(
            input_ids=encoded["input_ids"],
            token_type_ids=encoded["token_type_ids"] if self.token_types else None,
            contexts=contexts,
            encoding=encoded,
            rows=np.asarray(encoded["overflow_to_sample_mapping"]),
        )

    def answer(self, contexts: list[str], questions: list[str]) -> tuple[pa.Array, BatchStats]:
        """The best answer to each question in its context, and the batching statistics: :meth:`annotate`
        with the questions given rather than read from the spec or the rows."""
        return self.complete(self.encode(contexts, questions))

    @staticmethod
    def head(outputs: Any) -> Any:
        """Start and end logits side by side: ``[batch, tokens, 2]``."""
        import torch

        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)

    def postprocess(self, inputs: Windows, logits: list[np.ndarray]) -> pa.Array:
        """Each window's best spans, widened to words; per row, equal answers' scores summed, the best kept."""
        best: list[dict[str, dict]] = [{} for _ in inputs.contexts]  # per row: answer.lower() → answer
        null = np.full(len(inputs.contexts), np.inf, np.float32)
        for chunk in range(0, len(logits), WINDOWS_PER_CHUNK):
            windows = range(chunk, min(chunk + WINDOWS_PER_CHUNK, len(logits)))
            self._collect(inputs, logits, windows, best, null)
        return self._choose(best, null)

    def _collect(self, inputs: Windows, logits, windows, best, null) -> None:
        """Decode a chunk of windows and fold each window's answer into its row's candidates."""
        encoded, contexts = inputs.encoding, inputs.contexts
        width = max(len(encoded["input_ids"][w]) for w in windows)
        lengths = np.array([len(encoded["input_ids"][w]) for w in windows])
        stacked = np.zeros((len(windows), width, 2), np.float32)
        ids = np.full((len(windows), width), -1)
        sequences = np.full((len(windows), width), -1)
        words = np.full((len(windows), width), -1)
        offsets = np.zeros((len(windows), width, 2), np.int64)
        for row, w in enumerate(windows):
            n = lengths[row]
            stacked[row, :n] = logits[w][:n]
            ids[row, :n] = encoded["input_ids"][w]
            sequences[row, :n] = [-1 if s is None else s for s in encoded.sequence_ids(w)]
            words[row, :n] = [-1 if s is None else s for s in encoded.word_ids(w)]
            offsets[row, :n] = encoded["offset_mapping"][w]
        allowed = (sequences == self.context_index) | (ids == self.tokenizer.cls_token_id)
        spans = best_spans(stacked, lengths, allowed, self.spec.max_answer_length)
        first, last = word_bounds(words, sequences)
        picked = np.arange(len(windows))[:, None]
        char_starts = offsets[picked, first[picked, spans.starts], 0]
        char_ends = offsets[picked, last[picked, spans.ends], 1]
        window_rows = inputs.rows[windows.start : windows.stop]
        np.minimum.at(null, window_rows, spans.null_scores)
        # Best first within a window, windows in order: the first span of an answer text names its place.
        for k, candidate in zip(*np.nonzero(spans.kept), strict=True):
            row = window_rows[k]
            start, end = int(char_starts[k, candidate]), int(char_ends[k, candidate])
            text = contexts[row][start:end]
            score = float(spans.scores[k, candidate])
            seen = best[row].get(text.lower())
            if seen:
                seen["score"] += score
            else:
                best[row][text.lower()] = {"answer": text, "score": score, "start": start, "end": end}

    def _choose(self, best: list[dict[str, dict]], null: np.ndarray) -> pa.Array:
        """Highest score per row, the earliest on a tie; the empty answer if the null score beats it."""
        answers = []
        for candidates, null_score in zip(best, null, strict=True):
            top = max(candidates.values(), key=lambda answer: answer["score"], default=None)
            no_answer = {"answer": "", "score": float(null_score), "start": 0, "end": 0}
            if self.spec.allow_no_answer and (top is None or null_score > top["score"]):
                top = no_answer
            answers.append(top or {**no_answer, "score": 0.0})
        return pa.array(answers, ANSWER)

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
