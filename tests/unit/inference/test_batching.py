import random

import pytest

from batchnlp.inference.batching import MIN_ROWS_PER_WIDTH, padded_length, token_budget_batches


@pytest.mark.parametrize("seed", range(5))
def test_every_row_once_within_budget_and_sorted(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 512) for _ in range(rng.randint(1, 2000))]
    budget = rng.choice([512, 2048, 8192])
    batches = token_budget_batches(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        width = padded_length(max(lengths[i] for i in batch))
        assert len(batch) == 1 or width * len(batch) <= budget
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat)


def test_equal_lengths_keep_input_order():
    batches = token_budget_batches([5] * 10 + [3] * 10, 10_000)
    flat = [i for batch in batches for i in batch]
    assert flat == list(range(10, 20)) + list(range(10))


def test_a_row_longer_than_the_budget_gets_its_own_batch():
    assert token_budget_batches([600, 4], 256) == [[1], [0]]


def test_batches_break_where_the_padded_width_grows():
    lengths = [8] * MIN_ROWS_PER_WIDTH + [100] * MIN_ROWS_PER_WIDTH
    batches = token_budget_batches(lengths, 1_000_000)
    assert [len(b) for b in batches] == [MIN_ROWS_PER_WIDTH, MIN_ROWS_PER_WIDTH]


def test_padding_is_only_the_round_up_to_eight():
    rng = random.Random(3)
    lengths = [rng.randint(1, 300) for _ in range(5000)]
    batches = token_budget_batches(lengths, 8192)
    padded = sum(padded_length(max(lengths[i] for i in b)) * len(b) for b in batches)
    assert padded <= sum(lengths) * 1.05


def test_padded_length():
    assert [padded_length(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
