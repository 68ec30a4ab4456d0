"""Token-budget batching, pure and torch-free: the part of throughput with the most edge cases.

Rows are sorted by token length (stably, so equal lengths keep input order) and cut into
batches whose *padded* size stays within a token budget. Short rows travel in big batches,
long rows in small ones, and almost no compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Sequence

PAD_MULTIPLE = 8
MIN_ROWS_PER_WIDTH = 8


def padded_length(length: int, multiple: int = PAD_MULTIPLE) -> int:
    """Round up to a multiple of ``multiple`` (tensor cores and vector units like aligned shapes)."""
    return -(-length // multiple) * multiple


def token_budget_batches(
    lengths: Sequence[int], tokens_per_batch: int, multiple: int = PAD_MULTIPLE
) -> list[list[int]]:
    """Group row indices into batches of similar length, each within ``tokens_per_batch``.

    Budget = rows × padded length of the longest row. A batch is also cut where the padded
    width grows, once it holds ``MIN_ROWS_PER_WIDTH`` rows: otherwise a budget larger than a
    unit's tokens would pad every short row to the longest one. The only padding left is the
    round-up to ``multiple``. A single row longer than the budget still gets a batch of its own.
    Every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    current_width = 0
    for index in order:
        width = padded_length(lengths[index], multiple)
        over_budget = width * (len(current) + 1) > tokens_per_batch
        wider = width > current_width and len(current) >= MIN_ROWS_PER_WIDTH
        if current and (over_budget or wider):
            batches.append(current)
            current = []
        current.append(index)
        current_width = width
    if current:
        batches.append(current)
    return batches
