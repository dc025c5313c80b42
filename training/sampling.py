"""Length-grouped batches in a shuffled order.

transformers' ``LengthGroupedSampler`` sorts each megabatch (50 batches) by length and
yields its batches longest first, so consecutive steps walk from the longest rows to the
shortest and back: a sawtooth curriculum. On a templated dataset such as docker-commands,
where length tracks the kind of command, a short run then spends whole stretches on one
kind (the loss curve jumps at every megabatch boundary). This sampler keeps the padding
saving (rows of a batch still come from one sorted megabatch) but shuffles the order of
all batches, so every stretch of steps sees every kind of row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGABATCH_BATCHES = 50  # as transformers' LengthGroupedSampler


class ShuffledLengthGroupedSampler(Sampler[int]):
    """Indices such that each consecutive ``batch_size`` run has similar lengths and the
    runs come in random order. Uses torch's global RNG, which the Trainer seeds (and
    restores on resume), like the sampler it replaces."""

    def __init__(self, lengths: Sequence[int], batch_size: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.lengths)).tolist()
        span = MEGABATCH_BATCHES * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            mega = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        # A short tail batch would be one of many; keep it last so every other batch is full.
        full = [b for b in batches if len(b) == self.batch_size]
        tail = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full)).tolist()]
        return iter([i for batch in shuffled + tail for i in batch])
