"""No checkpoint batchnlp loads may run code of its own: every ``from_pretrained`` call says so."""

from __future__ import annotations

import ast

from tests.support import REPO

PACKAGE = REPO / "batchnlp"
# torch's ``nn.Embedding.from_pretrained`` builds a layer from a tensor: it loads no checkpoint.
TENSOR_CONSTRUCTORS = {"nn.Embedding", "torch.nn.Embedding", "nn.EmbeddingBag", "torch.nn.EmbeddingBag"}


def from_pretrained_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and ast.unparse(node.func.value) not in TENSOR_CONSTRUCTORS
            ):
                calls.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node))
    return calls


def refuses_remote_code(call: ast.Call) -> bool:
    return any(
        keyword.arg == "trust_remote_code" and isinstance(keyword.value, ast.Constant) and keyword.value.value is False
        for keyword in call.keywords
    )


def test_every_from_pretrained_call_passes_trust_remote_code_false():
    calls = from_pretrained_calls()
    # The walk sees the loaders of run and estimate (models/load) and distill (and the test checkpoints' tokenizer).
    files = {where.split(":")[0] for where, _ in calls}
    assert {
        "batchnlp/inference/models/load.py",
        "batchnlp/distillation/job.py",
        "batchnlp/distillation/train.py",
    } <= files
    assert [where for where, call in calls if not refuses_remote_code(call)] == []
