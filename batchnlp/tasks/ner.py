"""Named entities (token classification): each text's entities, as transformers' token-classification
pipeline finds them.

preprocess: each text's tokens, cut into windows of ``max_length`` tokens overlapping by ``stride``
(the fast tokenizer's ``return_overflowing_tokens``, as qa's windows) with their character offsets;
forward: label logits for every token of every window, batched together through the engine (int8's
near ties rescored in fp32); postprocess: per text, each token's scores from the window where it has
the most context, then the pipeline's aggregation over the whole text (:func:`entities_of`).

The aggregation is ``TokenClassificationPipeline``'s (transformers 5.x): ``none`` keeps each token
labelled other than ``O`` (entity: the raw label such as ``B-PER``, word: the token); ``simple`` groups
adjacent tokens of one type (a ``B-`` label starts a new group) and averages their scores; ``first``,
``average`` and ``max`` first give each word one label (its first token's, its tokens' averaged scores',
or its surest token's) and then group words as ``simple`` groups tokens. Which tokens continue a word is
the pipeline's rule too: a word-aware tokenizer (WordPiece's ``##``) says so, for another (byte-level
BPE) a token continues a word when no space precedes it. Texts within one window give exactly the
pipeline's entities (tests/unit/tasks/test_ner.py); a longer text's windows are merged per token
before aggregation, where the pipeline (given ``stride``) aggregates each window and then keeps the
longest of overlapping entities: here an entity never splits at a window's edge.

Character offsets are the tokenizer's offsets into the text as given (no normalisation), so
``text[start:end]`` is the entity's span, for any script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchnlp.inference.engine import BatchStats, Engine
from batchnlp.inference.models.load import check_kind, load_token_classifier
from batchnlp.tasks import DEFAULT_AGGREGATION
from batchnlp.tasks.base import ModelInputs, Task
from batchnlp.tasks.classify import softmax
from batchnlp.tasks.columns import ENTITIES

if TYPE_CHECKING:
    from batchnlp.spec import TaskSpec  # the spec reads the task registry: tasks sit below it

DEFAULT_STRIDE = 128  # tokens of overlap between a long text's windows (at most half a window)
IGNORED = ("O",)  # the pipeline's ignore_labels: tokens and groups labelled O are no entities
NO_LIMIT = 1_000_000  # a tokenizer's model_max_length above this is "none set" (transformers' VERY_LARGE_INTEGER)
# Position embeddings a model cannot use for tokens: RoBERTa's family numbers positions from padding_idx + 1.
POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


@dataclass(kw_only=True)
class Windows(ModelInputs):
    """ner's model inputs: every window of every text, and where each window's tokens sit in its text."""

    texts: list[str]
    encoding: Any  # the tokenizer's BatchEncoding: offsets and special-token masks per window (None: no texts)
    rows: np.ndarray  # [windows]: the text each window belongs to
    starts: np.ndarray  # [windows]: the index, among its text's tokens, of the window's first token

    def text_tokens(self) -> np.ndarray:
        """The tokens of every window of each text (special tokens included)."""
        return self.tokens_by_text(self.rows, len(self.texts))


class NamedEntities(Task):
    """preprocess: token windows with offsets; forward: label logits per token (int8 near ties in fp32);
    postprocess: tokens merged across windows, aggregated into entities (and the redacted text)."""

    loader = staticmethod(load_token_classifier)

    def __init__(self, spec: TaskSpec, directory: Path, engine: Engine | None, max_length: int | None) -> None:
        super().__init__(spec, directory, engine, max_length)
        config = self.config
        check_kind(getattr(config, "architectures", None), spec.model, "token_classifier")  # plan checks it too
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        positions = config.max_position_embeddings - POSITION_OFFSETS.get(config.model_type, 0)
        model_max = self.tokenizer.model_max_length
        limits = [max_length, model_max if model_max and model_max < NO_LIMIT else None, positions]
        self.max_length = min(limit for limit in limits if limit)
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        self.stride = min(DEFAULT_STRIDE, room // 2)
        self.step = room - self.stride  # a window starts this many tokens after the one before it
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names
        # The pipeline's test (its tokenizer's _tokenizer is the public backend_tokenizer): "##" says so; BPE's "" not.
        model = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "model", None)
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        self.aggregation = spec.aggregation or DEFAULT_AGGREGATION
        self.kept = set(spec.entities) if spec.entities else None

    def preprocess(self, texts: list[str], rows: pa.Table | None = None) -> Windows:
        """Each text's windows of ``max_length`` tokens overlapping by ``stride``, with offsets."""
        if not texts:
            empty = np.zeros(0, np.int64)
            return Windows(input_ids=[], texts=[], encoding=None, rows=empty, starts=empty)
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=self.token_types,
            return_attention_mask=False,
        )
        rows = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
        first = np.searchsorted(rows, rows)  # each text's first window (windows come in text order)
        return Windows(
            input_ids=encoded["input_ids"],
            token_type_ids=encoded["token_type_ids"] if self.token_types else None,
            texts=list(texts),
            encoding=encoded,
            rows=rows,
            starts=(np.arange(len(rows)) - first) * self.step,
        )

    def forward(self, inputs: ModelInputs) -> tuple[list[np.ndarray], BatchStats]:
        """Logits ``[tokens, labels]`` per window; with int8, a window where any token's best two label scores
        are closer than the rescore margin runs again in fp32, every token of it then fp32's."""
        logits, stats = super().forward(inputs)
        margin = self.engine.rescore_margin if self.engine is not None else 0.0
        if not margin or not isinstance(inputs, Windows) or not logits:
            return logits, stats
        masks = inputs.encoding["special_tokens_mask"]
        near = [w for w, window in enumerate(logits) if _closest_call(window, masks[w]) < margin]
        if near:
            reference = self.engine.reference(self.directory, self.spec.model, load_token_classifier)
            types = [inputs.token_type_ids[w] for w in near] if inputs.token_type_ids is not None else None
            again, extra = self.engine.run(
                reference, [inputs.input_ids[w] for w in near], self.tokenizer.pad_token_id, self.head, types
            )
            for w, window in zip(near, again, strict=True):
                logits[w] = window
            stats.add_second_pass(extra)
            stats.rescored += len(near)
        return logits, stats

    def postprocess(self, inputs: Windows, logits: list[np.ndarray]) -> pa.Array:
        """Per text, its entities (with ``redact``, and its redacted text): a value of :attr:`output_type`."""
        merged = _merged(inputs, logits)
        values = [self.entities(text, *tokens) for text, tokens in zip(inputs.texts, merged, strict=True)]
        entities = pa.array(values, ENTITIES)
        if not self.spec.redact:
            return entities
        texts = inputs.texts
        redacted = pa.array(
            [redact(t, found, self.aggregation) for t, found in zip(texts, values, strict=True)], pa.string()
        )
        return pa.StructArray.from_arrays([entities, redacted], fields=list(self.output_type))

    def entities(self, text: str, ids: np.ndarray, offsets: np.ndarray, logits: np.ndarray) -> list[dict[str, Any]]:
        """One text's entities from its tokens (special tokens left out), kept as ``--entities`` says."""
        found = entities_of(
            text, ids, offsets, logits, self.tokenizer, self.labels, self.aggregation, word_aware=self.word_aware
        )
        if self.kept is None:
            return found
        return [entity for entity in found if entity_type(entity["entity"], self.aggregation) in self.kept]


def _closest_call(window: np.ndarray, special: list[int]) -> float:
    """The smallest gap between a token's best two label probabilities, over a window's own tokens."""
    content = np.flatnonzero(np.asarray(special) == 0)
    if not len(content) or window.shape[-1] < 2:
        return np.inf
    probs = softmax(window[content])
    top = np.sort(probs, axis=-1)[:, -2:]
    return float((top[:, 1] - top[:, 0]).min())


def _merged(inputs: Windows, logits: list[np.ndarray]):
    """Per text, its tokens (ids, offsets ``[n, 2]``, logits ``[n, labels]``) in order, each taken from the
    window where it has the most context (the most tokens on its nearer side; the earlier window on a tie)."""
    encoded = inputs.encoding
    parts: list[tuple[np.ndarray, ...]] = []
    for w in range(len(inputs.input_ids)):
        content = np.flatnonzero(np.asarray(encoded["special_tokens_mask"][w]) == 0)
        n = len(content)
        place = np.arange(n)
        parts.append(
            (
                np.full(n, inputs.rows[w]),
                inputs.starts[w] + place,
                np.minimum(place, n - 1 - place),
                np.asarray(encoded["input_ids"][w])[content],
                np.asarray(encoded["offset_mapping"][w], dtype=np.int64).reshape(-1, 2)[content],
                np.asarray(logits[w][: len(encoded["input_ids"][w])])[content],
            )
        )
    count = len(inputs.texts)
    if not parts:
        return
    rows, tokens, context, ids, offsets, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.lexsort((-context, tokens, rows))  # by text, token, then most context first (stable: earlier window)
    rows, tokens = rows[order], tokens[order]
    first = np.ones(len(order), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (tokens[1:] != tokens[:-1])
    chosen = order[first]
    bounds = np.searchsorted(rows[first], np.arange(count + 1))
    for row in range(count):
        picked = chosen[bounds[row] : bounds[row + 1]]
        yield ids[picked], offsets[picked], scores[picked]


def entities_of(
    text: str,
    ids: np.ndarray,
    offsets: np.ndarray,
    logits: np.ndarray,
    tokenizer: Any,
    labels: list[str],
    aggregation: str,
    *,
    word_aware: bool,
) -> list[dict[str, Any]]:
    """``TokenClassificationPipeline.postprocess`` for one text's tokens (no special tokens), as dicts of
    entity, score, start, end and word: ``gather_pre_entities``, ``aggregate`` and the ``O`` filter."""
    if not len(ids):
        return []
    scores = softmax(logits.astype(np.float32))
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    unknown = tokenizer.unk_token_id
    pieces = []  # gather_pre_entities: (word, start, end, is_subword)
    for token_id, token, (start, end) in zip(ids.tolist(), tokens, offsets.tolist(), strict=True):
        reference = text[start:end]
        if token_id == unknown:
            pieces.append((reference, start, end, False))
        elif word_aware:
            pieces.append((token, start, end, len(token) != len(reference)))
        else:
            pieces.append((token, start, end, start > 0 and " " not in text[start - 1 : start + 1]))
    if aggregation in ("none", "simple"):
        best = scores.argmax(axis=-1)
        found = [
            {"entity": labels[k], "score": scores[i, k], "word": word, "start": start, "end": end}
            for i, (k, (word, start, end, _)) in enumerate(zip(best.tolist(), pieces, strict=True))
        ]
        if aggregation == "none":
            return [_typed(entity) for entity in found if entity["entity"] not in IGNORED]
    else:
        found = _words(pieces, scores, tokenizer, labels, aggregation)
    return [_typed(group) for group in _groups(found, tokenizer) if group["entity"] not in IGNORED]


def _words(pieces: list[tuple], scores: np.ndarray, tokenizer: Any, labels: list[str], aggregation: str) -> list[dict]:
    """``aggregate_words``: each word (a token and the subword tokens after it) one entity, as ``first``,
    ``average`` or ``max`` picks its label."""
    starts = [i for i, piece in enumerate(pieces) if i == 0 or not piece[3]]
    words = []
    for begin, stop in zip(starts, [*starts[1:], len(pieces)], strict=True):
        group = scores[begin:stop]
        if aggregation == "first":
            chosen = group[0]
        elif aggregation == "max":
            chosen = group[int(np.argmax(group.max(axis=-1)))]  # the first of equally sure tokens, as max()
        else:
            chosen = np.nanmean(group, axis=0)
        k = int(chosen.argmax())
        words.append(
            {
                "entity": labels[k],
                "score": chosen[k],
                "word": tokenizer.convert_tokens_to_string([piece[0] for piece in pieces[begin:stop]]),
                "start": pieces[begin][1],
                "end": pieces[stop - 1][2],
            }
        )
    return words


def _groups(entities: list[dict], tokenizer: Any) -> list[dict]:
    """``group_entities``: adjacent entities of one type, a ``B-`` label starting a new group; each group's
    type is its first label less its prefix, its score the mean of its members'."""
    groups: list[list[dict]] = []
    for entity in entities:
        if groups:
            bi, tag = _tag(entity["entity"])
            if tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(entity)
                continue
        groups.append([entity])
    return [
        {
            "entity": members[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([member["score"] for member in members])),
            "word": tokenizer.convert_tokens_to_string([member["word"] for member in members]),
            "start": members[0]["start"],
            "end": members[-1]["end"],
        }
        for members in groups
    ]


def _tag(label: str) -> tuple[str, str]:
    """``get_tag``: (B or I, the type); a label without a B-/I- prefix continues (I) a group of its own name."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _typed(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity": entity["entity"],
        "score": float(entity["score"]),
        "start": int(entity["start"]),
        "end": int(entity["end"]),
        "word": entity["word"],
    }


def entity_type(entity: str, aggregation: str) -> str:
    """The type ``--entities`` and ``--redact`` go by: a group's name; with ``none``, the label less B-/I-."""
    return _tag(entity)[1] if aggregation == "none" else entity


def redact(text: str, entities: list[dict[str, Any]], aggregation: str = DEFAULT_AGGREGATION) -> str:
    """``text`` with each entity's span replaced by ``[TYPE]``. Spans that overlap, or touch and have one
    type (a word's tokens under ``none``), are one span, named by its first entity's type."""
    spans: list[list[Any]] = []
    for entity in sorted(entities, key=lambda e: (e["start"], e["end"])):
        kind = entity_type(entity["entity"], aggregation)
        last = spans[-1] if spans else None
        if last and (entity["start"] < last[1] or (entity["start"] == last[1] and kind == last[2])):
            last[1] = max(last[1], entity["end"])
        else:
            spans.append([entity["start"], entity["end"], kind])
    out, at = [], 0
    for start, end, kind in spans:
        out += [text[at:start], f"[{kind}]"]
        at = end
    out.append(text[at:])
    return "".join(out)
