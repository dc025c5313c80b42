"""Paired bootstrap confidence intervals for the difference of two models' mean scores.

Both models answered the same examples, so we resample example indices (with replacement)
and recompute ``mean(candidate[idx] - baseline[idx])``; the percentile interval of those
resampled means is the CI. Pairing removes the between-example variance that an unpaired
test would charge to the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDelta:
    """Mean difference candidate - baseline with its bootstrap CI."""

    delta: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDelta:
    """CI of ``mean(candidate) - mean(baseline)`` over paired per-example scores.

    ``None``/NaN pairs (a score one model lacks) are dropped from both sides. Raises
    ValueError when the sequences differ in length or no pair is left.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"paired scores differ in length: {len(baseline)} vs {len(candidate)}")
    a = np.array([np.nan if x is None else x for x in baseline], dtype=float)
    b = np.array([np.nan if x is None else x for x in candidate], dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    diffs = b[keep] - a[keep]
    if diffs.size == 0:
        raise ValueError("no paired scores to compare")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(resamples, diffs.size))
    means = diffs[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedDelta(
        delta=float(diffs.mean()),
        low=float(low),
        high=float(high),
        n=int(diffs.size),
        confidence=confidence,
    )
