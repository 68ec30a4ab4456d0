"""The engine's device and precision choice, batch assembly, out-of-memory split and prefetching.

The GPU paths are decided by pure functions and exercised on CPU: the choice of device and
precision takes the machine's abilities as arguments, and out-of-memory is injected.
"""

import numpy as np
import pytest
import torch

from batchnlp.errors import SpecError
from batchnlp.inference.engine import Engine, _prefetch, choose, pad_batch, token_mask


@pytest.mark.parametrize(
    ("asked", "cuda", "bf16", "chosen"),
    [
        (("auto", "auto"), False, False, ("cpu", "fp32")),
        (("auto", "auto"), True, True, ("cuda", "bf16")),
        (("auto", "auto"), True, False, ("cuda", "fp16")),  # pre-Ampere GPUs lack bf16
        (("cpu", "auto"), True, True, ("cpu", "fp32")),
        (("cuda", "fp32"), True, True, ("cuda", "fp32")),
        (("auto", "int8"), False, False, ("cpu", "int8")),
        (("cpu", "bf16"), False, False, ("cpu", "bf16")),
    ],
)
def test_auto_device_and_precision_follow_the_machine(asked, cuda, bf16, chosen):
    assert choose(*asked, cuda=cuda, cuda_bf16=bf16) == chosen


@pytest.mark.parametrize(
    ("asked", "cuda", "message"),
    [
        (("cuda", "auto"), False, "sees no CUDA device"),
        (("cpu", "fp16"), True, "fp16 needs a CUDA device"),
        (("cuda", "int8"), True, "runs on CPU only"),
        (("auto", "int8"), True, "runs on CPU only"),
    ],
)
def test_impossible_combinations_are_refused(asked, cuda, message):
    with pytest.raises(SpecError, match=message):
        choose(*asked, cuda=cuda, cuda_bf16=True)


def test_pad_batch_right_pads_each_row():
    matrix = pad_batch([[5, 6, 7], [8], []], token_mask([3, 1, 0], 4), 0)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]


def test_cpu_pads_only_to_the_longest_row_gpu_to_a_multiple_of_8():
    engine = Engine("cpu", "fp32", backend="torch")
    assert engine.pad_multiple == 1 and engine.tokens_per_batch == 8192
    assert Engine("cpu", "fp32", backend="onnxruntime").tokens_per_batch == 1024
    assert Engine("cpu", "fp32", 2048).tokens_per_batch == 2048


class SumModel(torch.nn.Module):
    """Stands in for a model: output per row is the sum of its unmasked ids and its length.

    Raises CUDA's out-of-memory error for batches over ``max_rows`` rows, as a GPU would.
    """

    def __init__(self, max_rows: int | None = None) -> None:
        super().__init__()
        self.max_rows = max_rows
        self.calls: list[int] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append(len(input_ids))
        if self.max_rows is not None and len(input_ids) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.stack([(input_ids * attention_mask).sum(1), attention_mask.sum(1)], 1)


def rows(count, seed=0, lengths=(1, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, rng.integers(*lengths)).tolist() for _ in range(count)]


def expected(input_ids):
    return [[sum(ids), len(ids)] for ids in input_ids]


def test_rows_come_back_in_input_order():
    input_ids = rows(300)
    results, stats = Engine("cpu", "fp32", 256).run(SumModel(), input_ids, 0, lambda out: out)
    assert [r.tolist() for r in results] == expected(input_ids)
    assert stats.batches > 1 and stats.tokens == sum(map(len, input_ids)) and stats.first_output_at


def test_out_of_memory_splits_the_batch_and_retries_until_it_fits(caplog):
    input_ids = rows(200, seed=1, lengths=(30, 32))  # two widths: two big batches
    engine = Engine("cpu", "fp32", 100_000)
    model = SumModel(max_rows=24)
    results, stats = engine.run(model, input_ids, 0, lambda out: out)
    assert [r.tolist() for r in results] == expected(input_ids)
    assert stats.oom_splits > 0 and max(model.calls) > 24
    assert "out of memory on a batch" in caplog.text
    assert engine.tokens_per_batch < 100_000, "later units start from a budget that fitted"


def test_out_of_memory_on_a_single_row_is_not_hidden():
    with pytest.raises(torch.OutOfMemoryError):
        Engine("cpu", "fp32").run(SumModel(max_rows=0), [[1, 2, 3]], 0, lambda out: out)


def test_prefetch_keeps_order_and_raises_where_the_builder_failed():
    batches = [[i] for i in range(10)]
    assert [b for b, _ in _prefetch(batches, lambda b: b[0] * 2)] == batches

    def build(batch):
        if batch[0] == 6:
            raise ValueError("bad batch")
        return batch[0]

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for _, value in _prefetch(batches, build):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4, 5]


def test_prefetch_stops_its_thread_when_the_consumer_leaves_early():
    import threading

    feed = _prefetch([[i] for i in range(1000)], lambda b: b)
    next(feed)
    feed.close()
    assert not [t for t in threading.enumerate() if t.name == "batchnlp-prefetch"]
