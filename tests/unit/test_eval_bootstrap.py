"""Paired bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.bootstrap import paired_bootstrap


def test_constant_improvement_has_a_degenerate_interval():
    ci = paired_bootstrap([0.0, 0.2, 0.5, 0.1], [0.5, 0.7, 1.0, 0.6])
    assert ci.delta == pytest.approx(0.5)
    assert ci.low == pytest.approx(0.5) and ci.high == pytest.approx(0.5)
    assert ci.excludes_zero


def test_clear_improvement_excludes_zero_and_noise_does_not():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    better = base + 0.1 + rng.normal(0, 0.05, 300)
    ci = paired_bootstrap(base, better)
    assert ci.low > 0.08 and ci.high < 0.12
    assert ci.low <= ci.delta <= ci.high
    noise = base + rng.normal(0, 0.05, 300)
    noisy = paired_bootstrap(base, noise)
    assert noisy.low < 0 < noisy.high and not noisy.excludes_zero


def test_matches_normal_approximation_for_large_n():
    rng = np.random.default_rng(2)
    diffs = rng.normal(1.0, 2.0, 2000)
    ci = paired_bootstrap(np.zeros(2000), diffs, resamples=4000)
    half = 1.96 * diffs.std(ddof=1) / np.sqrt(2000)
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.1)


def test_pairs_with_missing_values_are_dropped():
    ci = paired_bootstrap([1.0, None, 3.0], [2.0, 5.0, float("nan")])
    assert ci.n == 1 and ci.delta == pytest.approx(1.0)


def test_length_mismatch_and_empty_are_errors():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="no paired scores"):
        paired_bootstrap([], [])


def test_seeded_and_reproducible():
    a, b = [0.1, 0.9, 0.3, 0.4], [0.2, 0.8, 0.9, 0.4]
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
