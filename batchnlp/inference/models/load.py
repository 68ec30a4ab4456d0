"""A staged checkpoint → a loaded tokenizer and model, or its tokenizer and config alone.

Only ``*.safetensors`` weights are ever loaded, remote code never runs, and a fast tokenizer is
required (tasks need its offsets and windows). A checkpoint that cannot load is named with why:
pickle-only weights, a head or vocabulary unlike its config, a truncated weights file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_sequence_classifier(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) in fp32 on the CPU; the engine moves and converts the model. The model's
    output has ``logits``; a DistilBERT classifier's last layer runs for the first token only."""
    return _load(directory, ref, "sequence_classifier", "a sequence classifier")


def load_question_answerer(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) of an extractive QA checkpoint (``start_logits``, ``end_logits``), fp32 on the CPU."""
    return _load(directory, ref, "question_answerer", "a question-answering model")


def load_encoder(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, :class:`~batchnlp.inference.pooling.PooledEncoder`) of an encoder checkpoint, fp32 on the CPU:
    its base model (any head left aside) pooled as its sentence-transformers files say
    (:mod:`batchnlp.inference.models.sentence`). Its output has ``embeddings``. No backend exports it: on
    onnxruntime it runs on torch."""
    from batchnlp.inference.models.sentence import read_settings
    from batchnlp.inference.pooling import PooledEncoder

    settings = read_settings(directory, ref)
    tokenizer, encoder = _load(directory, ref, "encoder", "an encoder")
    return tokenizer, PooledEncoder(encoder, settings.pooling, settings.normalize).eval()


def load_token_classifier(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, model) of a token-classification checkpoint (``logits`` ``[rows, tokens, labels]``), fp32 on
    the CPU. Another kind of checkpoint is refused (:func:`check_kind`), and so is one whose safetensors lack
    the head's weights: transformers would start them at random and label every token by chance."""
    check_kind(json.loads((directory / "config.json").read_text()).get("architectures"), ref, "token_classifier")
    tokenizer, model = _load(directory, ref, "token_classifier", KINDS["token_classifier"][1])
    missing, other = _head_weights(directory, model)
    if missing or other:
        found = f"has no {', '.join(missing[:3])}" if missing else f"has another head's {', '.join(other[:3])}"
        raise ModelError(
            f"model {ref!r} is not a token classifier: its safetensors {found} (a token-classification head is "
            "one classifier layer over every token), and transformers would start the head at random or read "
            "another head's weights. --task ner needs a token-classification (NER) checkpoint "
            "(*ForTokenClassification)"
        )
    return tokenizer, model


# Head kinds: transformers' architecture suffix, and how an error names the kind.
KINDS = {
    "sequence_classifier": ("ForSequenceClassification", "a sequence classifier"),
    "question_answerer": ("ForQuestionAnswering", "a question-answering model"),
    "token_classifier": ("ForTokenClassification", "a token classifier"),
    "masked_lm": ("ForMaskedLM", "a masked language model"),
    "encoder": ("Model", "an encoder without a head"),
}


def check_kind(architectures: list[str] | None, ref: str, head: str) -> None:
    """A checkpoint whose config.json names its architectures, none of them ``head``'s kind, is refused with
    the kind found and the kind needed (a config that names none is checked by its weights, when loaded)."""
    suffix, needed = KINDS[head]
    if not architectures or any(name.endswith(suffix) for name in architectures):
        return
    found = next(
        (what for end, what in KINDS.values() if any(name.endswith(end) for name in architectures)), "another kind"
    )
    task = {"token_classifier": "ner"}.get(head, head)
    raise ModelError(
        f"model {ref!r} is {found} ({', '.join(architectures)} in its config.json), but task {task} needs "
        f"{needed} (*{suffix}): pass such a checkpoint with --model {task}=REF"
    )


def _head_weights(directory: Path, model: Any) -> tuple[list[str], list[str]]:
    """The model's head weights (outside its base model) that no safetensors file of the checkpoint holds, and
    the files' weights outside the base model that the model has no use for (another head's)."""
    from safetensors import safe_open

    prefix = getattr(model, "base_model_prefix", "distilbert")
    names: set[str] = set()
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            names.update(weights.keys())
    state = model.state_dict()
    own = [name for name in state if not name.startswith(f"{prefix}.")]
    missing = [name for name in own if name not in names and f"{prefix}.{name}" not in names]
    outside = (name for name in names if not name.startswith(f"{prefix}."))
    other = sorted(name for name in outside if name not in state and f"{prefix}.{name}" not in state)
    return missing, other


def _load(directory: Path, ref: str, head: str, what: str) -> tuple[Any, Any]:
    """Safetensors only, no remote code, and a fast tokenizer: tasks need its offsets and windows.

    DistilBERT checkpoints load as :mod:`batchnlp.inference.distilbert`'s modules, which spare the process
    transformers' modeling code; any other checkpoint, or one that module does not recognise
    exactly, loads through transformers' auto classes (imported only then).
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    from batchnlp.inference import distilbert

    auto_class: Any = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        model = distilbert.load(directory, head) if head in distilbert.HEADS else None
        if model is None:
            auto_class = _auto_class(head)
            model = _with_attention(directory, ref, auto_class)
    except (OSError, ValueError, KeyError) as e:
        if "trust_remote_code" in str(e):  # transformers' advice (pass trust_remote_code=True) is not ours
            raise ModelError(
                f"cannot load model {ref!r} as {what}: it needs its own Python code (auto_map in its config), "
                "and batchnlp never runs a checkpoint's code. Use a model type that transformers ships"
            ) from e
        raise ModelError(f"cannot load model {ref!r} as {what}: {e}") from e
    except RuntimeError as e:  # transformers' "size mismatch": a head or an embedding unlike the config's
        mismatches = _shape_mismatches(directory, auto_class) if auto_class else []
        if not mismatches:
            raise
        raise ModelError(
            f"model {ref!r} does not match its own config.json as {what}: {'; '.join(mismatches[:5])}. The checkpoint "
            "is malformed (its config names another head size, e.g. num_labels/id2label, or another vocabulary): "
            "fix config.json or save the model again with save_pretrained"
        ) from e
    except SafetensorError as e:  # a weights file whose header does not describe its bytes
        unreadable = ", ".join(_unreadable_weights(directory)) or "its weights"
        raise ModelError(
            f"cannot load model {ref!r} as {what}: safetensors cannot read {unreadable} ({e}), so the file is "
            "truncated or corrupt, as a copy or upload that did not finish leaves it: copy the checkpoint again"
        ) from e
    return _fast(tokenizer, ref), model.eval()


def load_tokenizer_and_config(directory: Path, ref: str) -> tuple[Any, Any]:
    """(tokenizer, config) without the weights: what a task's ``preprocess`` needs (``batchnlp plan``
    counts tokens so, on the driver, without transformers' modeling code)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the tokenizer of model {ref!r}: {e}") from e
    return _fast(tokenizer, ref), config


def _fast(tokenizer: Any, ref: str) -> Any:
    """``tokenizer``, if it is a fast one: tasks need its offsets and windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {ref!r} has no fast tokenizer (tokenizer.json); batchnlp needs one")
    return tokenizer


AUTO_CLASSES = {
    "sequence_classifier": "AutoModelForSequenceClassification",
    "question_answerer": "AutoModelForQuestionAnswering",
    "encoder": "AutoModel",  # the base model, without a head (embeddings)
    "token_classifier": "AutoModelForTokenClassification",
}


def _auto_class(head: str) -> Any:
    """transformers' auto class for ``head`` (its first checkpoint imports transformers' modeling code: seconds)."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[head])


def _with_attention(directory: Path, ref: str, auto_class: Any) -> Any:
    """The model with PyTorch's SDPA attention, or eager attention for the architectures transformers
    has no SDPA for (DeBERTa-v2/v3): slower, but the checkpoint runs, and the log says so once."""
    try:
        return auto_class.from_pretrained(
            directory, attn_implementation="sdpa", use_safetensors=True, trust_remote_code=False
        )
    except ValueError as e:
        if "scaled_dot_product_attention" not in str(e):
            raise
    if directory not in _EAGER_NOTED:
        _EAGER_NOTED.add(directory)
        logger.info("model %s has no SDPA attention in transformers; it runs with eager attention", ref)
    return auto_class.from_pretrained(
        directory, attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )


_EAGER_NOTED: set[Path] = set()  # checkpoints already logged as falling back to eager attention, in this process


def _shape_mismatches(directory: Path, auto_class: Any) -> list[str]:
    """Tensors of the checkpoint whose shape is not the one its config gives them, each named."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = auto_class.from_config(AutoConfig.from_pretrained(directory, trust_remote_code=False))
    except Exception:  # the config itself is unusable: say nothing more than transformers did
        return []
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = model.base_model_prefix
    found = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is no mapping
                name = next(
                    (n for n in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")) if n in expected), None
                )
                shape = list(weights.get_slice(key).get_shape())
                if name is not None and expected[name] != shape:
                    found.append(f"{key} is {shape} in {path.name}, but {expected[name]} for the config")
    return found


def _unreadable_weights(directory: Path) -> list[str]:
    """The names of the weight files safetensors refuses to open: transformers' error names none."""
    from safetensors import SafetensorError, safe_open

    unreadable = []
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):  # checks the header, and that the file holds every tensor it lists
                pass
        except SafetensorError:
            unreadable.append(path.name)
    return unreadable


def check_files(ref: str, names: list[str]) -> None:
    if "config.json" not in names:
        raise ModelError(f"model {ref!r} has no config.json; point --model at a saved checkpoint")
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ModelError(
            f"model {ref!r} has only pickle weights ({', '.join(sorted(pickles))}); batchnlp loads "
            "only *.safetensors, since pickle files can run code. Re-save the checkpoint with "
            "save_pretrained() in transformers ≥ 4.35, which writes model.safetensors"
        )
    raise ModelError(f"model {ref!r} has no *.safetensors weights")
