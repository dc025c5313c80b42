"""The small-data rules behind "auto": held-out rows and hyperparameters from the row count."""

from __future__ import annotations

import pytest

from training.auto import auto_batch_size, auto_epochs, held_out_rows


@pytest.mark.parametrize(("rows", "held"), [
    (1, 0), (9, 0),            # too few to spare any
    (10, 4), (30, 4), (40, 4),  # the floor
    (41, 5), (200, 20),        # 10%, rounded up
    (100_000, 500),            # the cap
])
def test_held_out_rows(rows, held):
    assert held_out_rows(rows) == held


@pytest.mark.parametrize(("rows", "epochs"), [
    (1, 25), (3, 25), (4, 25), (5, 20), (26, 3), (30, 3), (20, 5),  # tiny: ~100 examples
    (34, 3), (1000, 3), (8333, 3),                                  # 3 epochs
    (8334, 2), (25_000, 1), (100_000, 1),                           # huge: ~25k examples
])
def test_auto_epochs(rows, epochs):
    assert auto_epochs(rows) == epochs


@pytest.mark.parametrize(("rows", "batch"), [
    (1, 1), (30, 1), (749, 1), (750, 2), (5000, 10), (1_000_000, 256),
])
def test_auto_batch_size(rows, batch):
    assert auto_batch_size(rows) == batch
