"""Turning token ids into logits as fast as the device allows: the engine (length-sorted
batching under a token budget, fp32/bf16/fp16/int8), its backends (torch, or batchnlp's ONNX
export of DistilBERT on ONNX Runtime: :mod:`.backends`), batchnlp's own DistilBERT modules, the
worker's share of the machine, unit heartbeats, and models: references, staging, loading and the
``batchnlp models`` store (:mod:`.models`).

May import: :mod:`batchnlp.io`, :mod:`batchnlp.util`, :mod:`batchnlp.errors`.
"""
