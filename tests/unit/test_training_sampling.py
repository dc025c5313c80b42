"""The training sampler: batches of similar length, in shuffled order, every row once."""

from __future__ import annotations

import random

import torch

from training.sampling import MEGABATCH_BATCHES, ShuffledLengthGroupedSampler

BATCH = 8


def _lengths(n: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randint(10, 120) for _ in range(n)]


def _batches(indices: list[int]) -> list[list[int]]:
    return [indices[i : i + BATCH] for i in range(0, len(indices), BATCH)]


def test_every_row_appears_exactly_once_per_epoch():
    lengths = _lengths(2173)
    torch.manual_seed(1)
    indices = list(ShuffledLengthGroupedSampler(lengths, BATCH))
    assert sorted(indices) == list(range(len(lengths)))


def test_batches_hold_rows_of_similar_length():
    lengths = _lengths(2000)
    torch.manual_seed(1)
    batches = _batches(list(ShuffledLengthGroupedSampler(lengths, BATCH)))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    # A random batch of 8 from 10..120 spans ~85 on average; one sorted megabatch ~2-3.
    assert spread / len(batches) < 10


def test_batch_order_has_no_sawtooth():
    """transformers' LengthGroupedSampler walks each megabatch longest to shortest; here
    the mean length of consecutive batches must not correlate with position."""
    lengths = _lengths(BATCH * MEGABATCH_BATCHES * 4)
    torch.manual_seed(1)
    batches = _batches(list(ShuffledLengthGroupedSampler(lengths, BATCH)))
    means = [sum(lengths[i] for i in b) / len(b) for b in batches]
    within = [p % MEGABATCH_BATCHES for p in range(len(means))]
    n = len(means)
    mx, my = sum(within) / n, sum(means) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(within, means, strict=True))
    var_x = sum((x - mx) ** 2 for x in within)
    var_y = sum((y - my) ** 2 for y in means)
    assert abs(cov / (var_x * var_y) ** 0.5) < 0.3


def test_seeded_order_is_reproducible_and_epochs_differ():
    lengths = _lengths(500)
    sampler = ShuffledLengthGroupedSampler(lengths, BATCH)
    torch.manual_seed(7)
    first, second = list(sampler), list(sampler)
    torch.manual_seed(7)
    assert list(sampler) == first and first != second


def test_a_short_tail_batch_comes_last():
    lengths = _lengths(BATCH * 10 + 3)
    torch.manual_seed(1)
    indices = list(ShuffledLengthGroupedSampler(lengths, BATCH))
    assert len(_batches(indices)[-1]) == 3
