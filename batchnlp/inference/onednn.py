"""fp32 on CPU: every Linear layer runs on oneDNN's kernels instead of the BLAS torch was built with.

torch's fp32 ``nn.Linear`` on CPU is an ``addmm`` in that BLAS: Intel MKL in the PyPI wheels,
which takes a generic path on CPUs that are not Intel's. Measured on a 2-core AMD EPYC (avx2,
avx512f, avx512_bf16, avx512_vnni), one thread, DistilBERT-base's shapes
(``benchmarks/forward_against_ort.py``): ``addmm`` 94-108 GFLOP/s, oneDNN 147-228 GFLOP/s (ONNX
Runtime's MLAS: 191). The GEMMs were 85% of the forward pass, which became 1.50x faster, its
logits within 7e-7 of the eager ones. ``torch.utils.mkldnn.to_mkldnn`` makes a Linear a
``MkldnnLinear``: its weights held in oneDNN's layout, dense tensors in and out, so nothing else
of the model changes.
"""

from __future__ import annotations

from typing import Any

import torch


def onednn_linears(model: Any) -> Any:
    """``model`` (fp32, on CPU) with its ``torch.nn.Linear`` layers on oneDNN, in place; returned
    as it is where torch was built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return model
    from torch.utils import mkldnn

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, name, mkldnn.to_mkldnn(child))
    return model
