"""An encoder checkpoint (DistilBERT, BERT) → an ONNX graph of ONNX Runtime's fused CPU operators.

``torch.onnx.export`` then ``onnxruntime.transformers``' optimizer (what ``benchmarks/ort_script.py``
does) costs seconds of tracing, needs transformers' eager attention to find the patterns it fuses,
and computes every position of the last layer. Here the graph is written directly from the loaded
model's weights (batchnlp's DistilBERT modules, or transformers' BERT classes, under transformers'
parameter names), with the operators that optimizer would give: ``EmbedLayerNormalization``,
``Attention`` (one [dim, 3·dim] QKV product, padding from each row's length) and ``BiasGelu``;
residuals are Adds before ONNX's ``LayerNormalization`` (see :func:`_skip_norm`). A classifier
reads only the first token's final state, so its last layer runs the query, the attention output
and the feed-forward for that token alone (``MultiHeadAttention`` over every key and value): 14%
of DistilBERT-base's arithmetic, as the torch path's ``first_only`` spares.

Inputs are ``input_ids`` and ``attention_mask`` (int32, right-padded: the engine pads so), and
``token_type_ids`` for BERT. Outputs are ``logits`` (classifier: ``[batch, labels]``; token
classifier: ``[batch, tokens, labels]``, every token's) or ``start_logits`` and ``end_logits``
(question answering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# DistilBERT's LayerNorm epsilon, fixed in its code rather than its config (batchnlp.inference.distilbert).
EPSILON = 1e-12
OPSET = 17  # the first with LayerNormalization
MICROSOFT = "com.microsoft"


class GraphBuilder:
    """Nodes and initializers of one graph, named in order."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def weight(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, *, domain: str = "", **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attributes))
        return output


@dataclass(frozen=True)
class Family:
    """Where an encoder family keeps each weight (transformers' names) and its settings' config keys."""

    embeddings: str  # prefix of the word, position (and token type) embeddings and their LayerNorm
    layer: str  # prefix of layer ``{i}``; the names below are within it
    query: str
    key: str
    value: str
    attention_out: str
    attention_norm: str
    inner: str  # the feed-forward's first Linear, before the activation
    outer: str
    output_norm: str
    pooler: str  # the classifier's first Linear, on the first token: ReLU after it, or tanh for BERT's pooler
    pooler_activation: str
    layers: str  # config keys: layer count, attention heads, activation
    heads: str
    activation: str
    token_types: bool


FAMILIES = {
    "distilbert": Family(
        embeddings="distilbert.embeddings", layer="distilbert.transformer.layer.{i}", query="attention.q_lin",
        key="attention.k_lin", value="attention.v_lin", attention_out="attention.out_lin",
        attention_norm="sa_layer_norm", inner="ffn.lin1", outer="ffn.lin2", output_norm="output_layer_norm",
        pooler="pre_classifier", pooler_activation="Relu", layers="n_layers", heads="n_heads",
        activation="activation", token_types=False,
    ),
    "bert": Family(
        embeddings="bert.embeddings", layer="bert.encoder.layer.{i}", query="attention.self.query",
        key="attention.self.key", value="attention.self.value", attention_out="attention.output.dense",
        attention_norm="attention.output.LayerNorm", inner="intermediate.dense", outer="output.dense",
        output_norm="output.LayerNorm", pooler="bert.pooler.dense", pooler_activation="Tanh",
        layers="num_hidden_layers", heads="num_attention_heads", activation="hidden_act", token_types=True,
    ),
}  # fmt: skip
ACTIVATIONS = ("gelu", "relu")  # the feed-forward activations the export writes (exact erf GELU)


def export(model: Any, family: str, head: str) -> Any:
    """The ``onnx.ModelProto`` of ``model`` (fp32; ``family`` a :data:`FAMILIES` key) for ``head``
    (``sequence_classifier``, ``question_answerer`` or ``token_classifier``)."""
    from onnx import TensorProto, helper

    config, kind = model.config, FAMILIES[family]
    weights = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    graph = GraphBuilder()
    epsilon = getattr(config, "layer_norm_eps", EPSILON) if family == "bert" else EPSILON
    hidden, lengths = _embeddings(graph, weights, kind, epsilon)
    layers = getattr(config, kind.layers)
    for index in range(layers):
        first_only = head == "sequence_classifier" and index == layers - 1
        names = Names(kind, kind.layer.format(i=index), f"layer{index}")
        hidden = _block(graph, weights, config, names, hidden, lengths, first_only, epsilon)
    if head == "sequence_classifier":
        outputs = {"logits": _classifier(graph, weights, kind, hidden)}
        shapes = {"logits": ["batch", config.num_labels]}
    elif head == "token_classifier":  # one classifier layer over every token's final state
        weight, bias = weights["classifier.weight"].T, weights["classifier.bias"]
        outputs = {"logits": _linear(graph, hidden, weight, bias, "logits")}
        shapes = {"logits": ["batch", "tokens", config.num_labels]}
    else:
        outputs = _answer_spans(graph, weights, hidden)
        shapes = {name: ["batch", "tokens"] for name in outputs}
    names_in = ("input_ids", "attention_mask", *(("token_type_ids",) if kind.token_types else ()))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "tokens"]) for name in names_in]
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in outputs]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, f"batchnlp-{family}-{head}", inputs, results, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MICROSOFT, 1)],
        producer_name="batchnlp",
    )
    proto.ir_version = 8  # what ONNX Runtime 1.14 and later read
    return proto


@dataclass(frozen=True)
class Names:
    """One layer's weight prefix (transformers') and node prefix (the graph's)."""

    family: Family
    weights: str
    nodes: str

    def weight(self, weights: dict[str, np.ndarray], part: str) -> np.ndarray:
        """``part``'s Linear weight as MatMul takes it, ``[in, out]``."""
        return weights[f"{self.weights}.{getattr(self.family, part)}.weight"].T

    def bias(self, weights: dict[str, np.ndarray], part: str) -> np.ndarray:
        return weights[f"{self.weights}.{getattr(self.family, part)}.bias"]


def _embeddings(graph: GraphBuilder, weights: dict[str, np.ndarray], family: Family, epsilon: float) -> tuple[str, str]:
    """Word, position (and token type) embeddings and their LayerNorm in one operator; also each row's length."""
    prefix = family.embeddings
    types, type_table = "", ""  # DistilBERT has no token types
    if family.token_types:
        types = "token_type_ids"
        type_table = graph.weight("token_type_embeddings", weights[f"{prefix}.token_type_embeddings.weight"])
    return graph.node(
        "EmbedLayerNormalization",
        [
            "input_ids",
            types,
            graph.weight("word_embeddings", weights[f"{prefix}.word_embeddings.weight"]),
            graph.weight("position_embeddings", weights[f"{prefix}.position_embeddings.weight"]),
            type_table,
            graph.weight("embeddings_norm_weight", weights[f"{prefix}.LayerNorm.weight"]),
            graph.weight("embeddings_norm_bias", weights[f"{prefix}.LayerNorm.bias"]),
            "attention_mask",
        ],
        "embedded",
        domain=MICROSOFT,
        epsilon=epsilon,
    ), _second_output(graph, "lengths")


def _second_output(graph: GraphBuilder, name: str) -> str:
    """Give the last node a second output (EmbedLayerNormalization's mask index: each row's length)."""
    graph.nodes[-1].output.append(name)
    return name


def _block(
    graph: GraphBuilder,
    weights: dict[str, np.ndarray],
    config: Any,
    names: Names,
    hidden: str,
    lengths: str,
    first_only: bool,
    epsilon: float,
) -> str:
    """One transformer layer: attention, residual + LayerNorm, feed-forward, residual + LayerNorm."""
    name, heads = names.nodes, getattr(config, names.family.heads)
    q, k, v = (names.weight(weights, part) for part in ("query", "key", "value"))
    qb, kb, vb = (names.bias(weights, part) for part in ("query", "key", "value"))
    if first_only:
        queries = graph.node(
            "Slice", [hidden, _ints(graph, "zero"), _ints(graph, "one"), _ints(graph, "one")], f"{name}.first"
        )
        query = _linear(graph, queries, q, qb, f"{name}.query")
        key = _linear(graph, hidden, k, kb, f"{name}.key")
        value = _linear(graph, hidden, v, vb, f"{name}.value")
        context = graph.node(
            "MultiHeadAttention", [query, key, value, "", lengths], f"{name}.context", domain=MICROSOFT, num_heads=heads
        )
        residual = queries
    else:
        qkv = graph.weight(f"{name}.qkv_weight", np.concatenate([q, k, v], axis=1))
        qkv_bias = graph.weight(f"{name}.qkv_bias", np.concatenate([qb, kb, vb]))
        context = graph.node(
            "Attention", [hidden, qkv, qkv_bias, lengths], f"{name}.context", domain=MICROSOFT, num_heads=heads
        )
        residual = hidden
    attended = _skip_norm(graph, weights, names, context, residual, ("attention_out", "attention_norm"), epsilon)
    inner = graph.node("MatMul", [attended, graph.weight(f"{name}.inner_weight", names.weight(weights, "inner"))],
                       f"{name}.inner")  # fmt: skip
    inner_bias = graph.weight(f"{name}.inner_bias", names.bias(weights, "inner"))
    if getattr(config, names.family.activation) == "gelu":
        activated = graph.node("BiasGelu", [inner, inner_bias], f"{name}.gelu", domain=MICROSOFT)
    else:
        activated = graph.node("Relu", [graph.node("Add", [inner, inner_bias], f"{name}.inner_biased")], f"{name}.relu")
    return _skip_norm(graph, weights, names, activated, attended, ("outer", "output_norm"), epsilon)


def _skip_norm(
    graph: GraphBuilder,
    weights: dict[str, np.ndarray],
    names: Names,
    hidden: str,
    residual: str,
    parts: tuple[str, str],
    epsilon: float,
) -> str:
    """``LayerNorm(hidden @ W + b + residual)`` (``parts``: the Linear's and the norm's), as two Adds and
    ONNX's LayerNormalization.

    Not ``SkipLayerNormalization``, which ONNX Runtime's optimiser would make of them (the session
    turns that fusion off: :data:`~batchnlp.inference.backends.onnx_runtime.UNFUSED`): its CPU
    kernel took 0.40 s of a 4.9 s forward pass where the Adds and LayerNormalization take 0.09 s
    (ONNX Runtime 1.32, one thread, DistilBERT-base; 20% of the int8 forward pass against 4%).
    """
    linear, norm = parts
    name = f"{names.nodes}.{linear}"
    biased = _linear(graph, hidden, names.weight(weights, linear), names.bias(weights, linear), name)
    summed = graph.node("Add", [biased, residual], f"{name}_residual")
    norm_prefix = f"{names.weights}.{getattr(names.family, norm)}"
    return graph.node(
        "LayerNormalization",
        [
            summed,
            graph.weight(f"{name}_norm_weight", weights[f"{norm_prefix}.weight"]),
            graph.weight(f"{name}_norm_bias", weights[f"{norm_prefix}.bias"]),
        ],
        f"{name}_norm",
        axis=-1,
        epsilon=epsilon,
    )


def _linear(graph: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    product = graph.node("MatMul", [x, graph.weight(f"{name}_weight", weight)], f"{name}_product")
    return graph.node("Add", [product, graph.weight(f"{name}_bias", bias)], name)


def _ints(graph: GraphBuilder, name: str) -> str:
    """A one-element int64 constant (Slice's starts, ends and axes), made once."""
    if not any(tensor.name == name for tensor in graph.initializers):
        graph.weight(name, np.array([{"zero": 0, "one": 1}[name]], dtype=np.int64))
    return name


def _classifier(graph: GraphBuilder, weights: dict[str, np.ndarray], family: Family, hidden: str) -> str:
    """``classifier(activation(pooler(first token)))``; ``hidden`` is ``[batch, 1, dim]`` already."""
    first = graph.node("Squeeze", [hidden, _ints(graph, "one")], "first_token")
    pooled = graph.node("Gemm", [first, graph.weight("pooler_weight", weights[f"{family.pooler}.weight"]),
                                 graph.weight("pooler_bias", weights[f"{family.pooler}.bias"])],
                        "pooler", transB=1)  # fmt: skip
    activated = graph.node(family.pooler_activation, [pooled], "pooler_activated")
    return graph.node("Gemm", [activated, graph.weight("classifier_weight", weights["classifier.weight"]),
                               graph.weight("classifier_bias", weights["classifier.bias"])],
                      "logits", transB=1)  # fmt: skip


def _answer_spans(graph: GraphBuilder, weights: dict[str, np.ndarray], hidden: str) -> dict[str, str]:
    """A start and an end logit per token: ``qa_outputs`` then a split of its two columns."""
    both = _linear(graph, hidden, weights["qa_outputs.weight"].T, weights["qa_outputs.bias"], "qa_outputs")
    index = {"start_logits": np.array(0, dtype=np.int64), "end_logits": np.array(1, dtype=np.int64)}
    return {name: graph.node("Gather", [both, graph.weight(f"{name}_column", column)], name, axis=2)
            for name, column in index.items()}  # fmt: skip
