"""A checkpoint on ONNX Runtime, called as the engine calls a torch model.

:func:`load` gives the tokenizer and an :class:`OnnxModel` for a DistilBERT or BERT checkpoint
(:func:`exported_as`): its cached export (:mod:`.onnx_cache`), made from the weights the loader
gives when the cache lacks it; for any other checkpoint, the torch model the loader gave, which
the engine then runs on torch. An :class:`OnnxModel` takes the engine's padded tensors and returns the outputs
under the names the torch models give them (``logits``; ``start_logits`` and ``end_logits``), so
tasks and the engine's batching are the same on both backends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchnlp.errors import ModelError
from batchnlp.inference import distilbert
from batchnlp.inference.backends.onnx_cache import cached, cached_export
from batchnlp.inference.backends.onnx_export import ACTIVATIONS, FAMILIES, export
from batchnlp.inference.models.load import load_tokenizer_and_config
from batchnlp.inference.models.stage import default_cache_dir

logger = logging.getLogger(__name__)

# The torch model classes batchnlp exports → (family, head) as the exporter names them.
EXPORTED = {
    "SequenceClassifier": ("distilbert", "sequence_classifier"),  # batchnlp.inference.distilbert's
    "QuestionAnswerer": ("distilbert", "question_answerer"),
    "TokenClassifier": ("distilbert", "token_classifier"),
    "BertForSequenceClassification": ("bert", "sequence_classifier"),  # transformers'
    "BertForQuestionAnswering": ("bert", "question_answerer"),
    "BertForTokenClassification": ("bert", "token_classifier"),
}
# ONNX Runtime's graph fusions left out: SkipLayerNormalization's CPU kernel is slower than the
# Adds and LayerNormalization it would replace (batchnlp.inference.backends.onnx_export._skip_norm).
UNFUSED = ["SkipLayerNormFusion"]
OUTPUTS = {"logits": distilbert.ClassifierOutput, "start_logits": distilbert.AnswerOutput}


class OnnxModel:
    """An ONNX Runtime session over a cached export, with the checkpoint's transformers config."""

    def __init__(self, graph: Path, config: Any, threads: int, export_seconds: float = 0.0) -> None:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        options = onnxruntime.SessionOptions()
        # The worker's share of the cores, as torch's: the cluster runs one process per core.
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: its shape-merge warnings are about our fused outputs
        try:
            self.session = onnxruntime.InferenceSession(
                str(graph), options, providers=["CPUExecutionProvider"], disabled_optimizers=UNFUSED
            )
        except (state.Fail, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile) as e:  # refused to open
            raise ModelError(
                f"ONNX Runtime cannot open the cached export {graph} ({e}). batchnlp wrote it whole, so something "
                f"else changed it: delete {graph.parent} and run again (batchnlp exports the model anew), or run "
                "with --backend torch"
            ) from e
        names = [output.name for output in self.session.get_outputs()]
        self.output = OUTPUTS[names[0]]
        self.token_types = any(tensor.name == "token_type_ids" for tensor in self.session.get_inputs())
        self.config = config
        self.export_seconds = export_seconds

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> Any:
        ids, mask = (tensor.numpy().astype(np.int32) for tensor in (input_ids, attention_mask))
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:  # BERT's segments: all 0 where the task gives none (a single text)
            feeds["token_type_ids"] = (
                np.zeros_like(ids) if token_type_ids is None else token_type_ids.numpy().astype(np.int32)
            )
        return self.output(*(torch.from_numpy(value) for value in self.session.run(None, feeds)))


def load(
    directory: Path,
    ref: str,
    loader: Callable[[Path, str], tuple[Any, Any]],
    precision: str,
    digest: str,
    cache: Path | None = None,
) -> tuple[Any, Any]:
    """(tokenizer, :class:`OnnxModel`) of the checkpoint at ``precision`` (fp32 or int8); (tokenizer,
    torch model) when it is not one batchnlp exports, for the engine to run on torch.

    The export is keyed by the checkpoint's content ``digest`` and the ``loader`` (which head): a
    cached one opens without the torch weights ever being read. Whether a checkpoint exports is
    decided from its loaded model before anything is written, so another family leaves no trace
    in the cache.
    """
    cache = cache or Path(default_cache_dir())
    head = loader.__name__  # which head: load_sequence_classifier, load_question_answerer
    graph = cached(cache, digest, head, precision)
    if graph is not None:
        tokenizer, config = load_tokenizer_and_config(directory, ref)
        return tokenizer, OnnxModel(graph, config, torch.get_num_threads())
    tokenizer, model = loader(directory, ref)
    kind = exported_as(model)
    if kind is None:  # decided before anything is written: the cache holds exports only
        _say_once(directory, "model %s is a %s checkpoint (%s); the onnxruntime backend exports DistilBERT and "
                  "BERT classifiers (of texts or tokens) and QA models, so it runs on torch", ref,
                  getattr(model.config, "model_type", "?"), type(model).__name__)  # fmt: skip
        return tokenizer, model
    try:
        graph, seconds = cached_export(cache, digest, head, precision, lambda: export(model, *kind))
    except OSError as e:  # a cache it cannot write (read-only, full): the job still runs, on torch
        _say_once(directory, "cannot write the ONNX export of model %s under %s (%s); it runs on torch",
                  ref, cache, e)  # fmt: skip
        return tokenizer, model
    if seconds:
        logger.info("exported model %s to ONNX (%s) in %.1f s, cached at %s", ref, precision, seconds, graph.parent)
    return tokenizer, OnnxModel(graph, model.config, torch.get_num_threads(), seconds)


def exported_as(model: Any) -> tuple[str, str] | None:
    """(family, head) of a model batchnlp exports as it is; None for any other (it runs on torch)."""
    kind = EXPORTED.get(type(model).__name__)
    if kind is None or getattr(model.config, "model_type", None) != kind[0]:
        return None
    config, family = model.config, FAMILIES[kind[0]]
    absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
    if getattr(config, family.activation) not in ACTIVATIONS or not absolute or getattr(config, "is_decoder", False):
        return None
    return kind


_SAID: set[Path] = set()  # checkpoints whose fallback to torch this process has logged


def _say_once(directory: Path, message: str, *args: Any) -> None:
    """Log why a checkpoint runs on torch, once per process (each worker loads it once per task)."""
    if Path(directory).resolve() not in _SAID:
        _SAID.add(Path(directory).resolve())
        logger.warning(message, *args)
