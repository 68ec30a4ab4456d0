"""The test oracle for qa: transformers 4.x's ``QuestionAnsweringPipeline``, one example at a time.

transformers 5.x has no question-answering pipeline, so this is a port of the 4.x one
(Apache-2.0, https://github.com/huggingface/transformers, ``src/transformers/pipelines/
question_answering.py`` as of v4.57.6, the last 4.x release: ``preprocess`` on the fast-tokenizer
path, ``_forward``, ``postprocess``, ``select_starts_ends``, ``decode_spans``, ``get_indices`` and
``get_answer``), reduced to what its defaults use (``top_k=1``, so the best ``2 * top_k + 10``
spans of each window, ``align_to_words=True``, no padding). It is
deliberately the simple way: one example, one window per forward pass, a Python loop over
windows and the full start × end matrix, so it shares nothing with the batched code it checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def pipeline_answer(
    model: Any,
    tokenizer: Any,
    question: str,
    context: str,
    *,
    max_seq_len: int = 384,
    doc_stride: int | None = None,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
) -> dict | list:
    """What ``pipeline("question-answering")(question=..., context=...)`` returns in 4.x."""
    max_seq_len = min(tokenizer.model_max_length, max_seq_len)
    if doc_stride is None:
        doc_stride = min(max_seq_len // 2, 128)
    question_first = tokenizer.padding_side == "right"
    encoded = tokenizer(
        text=question if question_first else context,
        text_pair=context if question_first else question,
        padding="do_not_pad",
        truncation="only_second" if question_first else "only_first",
        max_length=max_seq_len,
        stride=doc_stride,
        return_token_type_ids=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    min_null_score = 1000000  # large and positive
    answers: list[dict] = []
    for span in range(len(encoded["input_ids"])):
        # p_mask: 1 for tokens that cannot be in the answer, 0 for context tokens and CLS.
        p_mask = [tok != 1 if question_first else 0 for tok in encoded.sequence_ids(span)]
        input_ids = encoded["input_ids"][span]
        for cls_index in np.nonzero(np.array(input_ids) == tokenizer.cls_token_id)[0]:
            p_mask[cls_index] = 0
        inputs = {
            "input_ids": torch.tensor([input_ids]),
            "attention_mask": torch.tensor([encoded["attention_mask"][span]]),
        }
        if "token_type_ids" in tokenizer.model_input_names:  # _forward passes model_input_names only
            inputs["token_type_ids"] = torch.tensor([encoded["token_type_ids"][span]])
        with torch.no_grad():
            output = model(**inputs)
        starts, ends, scores, min_null_score = select_starts_ends(
            output.start_logits.numpy(),
            output.end_logits.numpy(),
            np.array([p_mask]),
            inputs["attention_mask"].numpy(),
            min_null_score,
            handle_impossible_answer,
            max_answer_len,
        )
        enc = encoded.encodings[span]
        for s, e, score in zip(starts, ends, scores, strict=True):
            start_index, end_index = get_indices(enc, s, e, 1 if question_first else 0)
            target = context[start_index:end_index]
            answer = next((a for a in answers if a["answer"].lower() == target.lower()), None)
            if answer:
                answer["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:1]
    return answers[0] if len(answers) == 1 else answers


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score, handle_impossible_answer, max_answer_len):
    """4.x ``select_starts_ends``: mask, softmax per window, null score, then ``decode_spans``."""
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


PRE_TOPK = 2 * 1 + 10  # postprocess: top_k * 2 + 10 candidates per window, as align_to_words may merge some


def decode_spans(start, end, max_answer_len, undesired_tokens):
    """4.x ``decode_spans`` with ``topk=12``: the whole start × end matrix, banded, the 12 best."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if len(scores_flat) < PRE_TOPK:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, PRE_TOPK)[0:PRE_TOPK]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    desired_spans = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts = starts[desired_spans]
    ends = ends[desired_spans]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def get_indices(enc, s: int, e: int, sequence_index: int) -> tuple[int, int]:
    """4.x ``get_indices`` with ``align_to_words=True``: widen the span to whole words."""
    try:
        start_word = enc.token_to_word(s)
        end_word = enc.token_to_word(e)
        start_index = enc.word_to_chars(start_word, sequence_index=sequence_index)[0]
        end_index = enc.word_to_chars(end_word, sequence_index=sequence_index)[1]
    except Exception:
        start_index = enc.offsets[s][0]
        end_index = enc.offsets[e][1]
    return start_index, end_index
