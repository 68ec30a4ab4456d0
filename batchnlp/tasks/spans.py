"""Answer-span search over many QA windows at once: numpy, no loop over windows or token pairs.

The scoring is transformers 4.x's ``QuestionAnsweringPipeline`` (``select_starts_ends`` and
``decode_spans``), so answers equal what that pipeline gives with the same checkpoint:

- tokens that cannot start or end an answer (question, separators) get the logit -10000, so
  they take no probability mass; the CLS token stays in, since SQuAD2-style checkpoints put
  the "no answer" score there;
- start and end logits are soft-maxed over each window separately;
- the null score is P(start = CLS) × P(end = CLS); then CLS is taken out of the search;
- a span (i, j) scores P(start = i) × P(end = j), for i ≤ j < i + max_answer_length;
- the best ``SPANS_PER_WINDOW`` spans of each window are kept (4.57's ``2 * top_k + 10`` for
  ``top_k=1``), best first; the caller widens each to whole words and sums the scores of spans
  that give the same answer text. Spans that score 0 are dropped: the pipeline keeps them only
  when a window has fewer than 12 candidates, and with score 0 they never win.

The pipeline builds the full L × L matrix per window; here only its band of
``max_answer_length`` diagonals is built (``[windows, L, max_answer_length]``), which holds
every candidate and keeps the (i, j) order of the flattened matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASKED_LOGIT = -10000.0  # the pipeline's value for tokens outside the context


SPANS_PER_WINDOW = 2 * 1 + 10  # transformers 4.57: top_k * 2 + 10 candidates per window, top_k = 1


@dataclass(frozen=True)
class Spans:
    """The best spans of each window, best first: token positions and scores; ``kept`` marks real ones."""

    starts: np.ndarray  # [windows, k] int
    ends: np.ndarray  # [windows, k] int, inclusive
    scores: np.ndarray  # [windows, k] float32
    null_scores: np.ndarray  # [windows] float32: P(start = CLS) × P(end = CLS)
    kept: np.ndarray  # [windows, k] bool: a candidate with a score above 0, inside the context


def best_spans(
    logits: np.ndarray, lengths: np.ndarray, allowed: np.ndarray, max_answer_length: int, k: int = SPANS_PER_WINDOW
) -> Spans:
    """The ``k`` best spans per window.

    ``logits`` is ``[windows, L, 2]`` (start, end) padded along L; ``lengths`` the real length
    of each window (padding takes no part in the softmax, as the pipeline runs unpadded
    windows); ``allowed`` ``[windows, L]`` marks context tokens and CLS. Equal scores keep
    (i, j) order.
    """
    count, width = allowed.shape
    real = np.arange(width)[None, :] < lengths[:, None]
    masked = np.where(allowed[..., None], logits, np.float32(MASKED_LOGIT))
    masked = np.where(real[..., None], masked, -np.inf).astype(np.float32)
    probs = np.exp(masked - masked.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    start, end = probs[..., 0], probs[..., 1]
    null_scores = start[:, 0] * end[:, 0]
    start[:, 0] = end[:, 0] = 0.0

    band = np.arange(width)[:, None] + np.arange(max_answer_length)[None, :]  # [L, K]: j = i + k
    padded_end = np.concatenate([end, np.zeros((count, max_answer_length), np.float32)], axis=1)
    flat = (start[:, :, None] * padded_end[:, band]).reshape(count, -1)  # [windows, L * K]
    k = min(k, flat.shape[1])
    top = np.sort(np.argpartition(-flat, k - 1, axis=1)[:, :k], axis=1)  # the k best, in (i, j) order
    order = np.argsort(-np.take_along_axis(flat, top, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(top, order, axis=1)
    starts, offsets = np.divmod(best, max_answer_length)
    ends = np.minimum(starts + offsets, width - 1)
    scores = np.take_along_axis(flat, best, axis=1)
    rows = np.arange(count)[:, None]
    kept = (scores > 0) & allowed[rows, starts] & allowed[rows, ends]
    return Spans(starts, ends, scores, null_scores, kept)


def word_bounds(word_ids: np.ndarray, sequence_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each token, the positions of the first and last token of its word in the window.

    The pipeline widens an answer to whole words (``align_to_words``: ``word_to_chars`` of the
    start and end tokens' words), so a span starting at "##ing" covers the whole word. Tokens
    with no word (special tokens; id -1) are words of their own. Both arrays are
    ``[windows, L]``.
    """
    count, width = word_ids.shape
    positions = np.broadcast_to(np.arange(width), (count, width))
    key = np.where(word_ids >= 0, sequence_ids * (width + 1) + word_ids, -1 - positions)
    new_word = np.ones((count, width), bool)
    new_word[:, 1:] = key[:, 1:] != key[:, :-1]
    first = np.maximum.accumulate(np.where(new_word, positions, 0), axis=1)
    word_ends = np.ones((count, width), bool)
    word_ends[:, :-1] = new_word[:, 1:]
    # The same scan from the right: position of the word's last token, counted from the end.
    from_end = np.maximum.accumulate(np.where(word_ends[:, ::-1], positions, 0), axis=1)
    last = (width - 1 - from_end)[:, ::-1]
    return first, last
