"""The small-data rules behind ``"auto"``: how many rows a job holds out, and the epochs,
batch size and learning rate it trains with, all from the dataset's row count.

Held-out rows (so every job adapter can be judged on rows it never saw):
    fewer than ``MIN_ROWS_TO_HOLD_OUT`` rows  -> none (the job says so in an event);
    otherwise ``HELD_OUT_SHARE`` of the rows, rounded up, at least ``MIN_HELD_OUT`` rows
    and at most ``MAX_HELD_OUT`` (enough for a confidence interval, no more).

Hyperparameters, after OpenAI's ``auto`` (its cookbook's estimator and legacy docs):
    epochs: 3, raised to min(25, 100 // n) when 3 epochs would show fewer than 100
    examples, lowered to max(1, 25000 // n) when they would show more than 25000;
    batch size: about 0.2% of the rows, at least 1, at most 256 (1 for any set under 750);
    learning rate multiplier: 1 (x the LoRA default 2e-4; OpenAI's 0.05-0.2 multiplies a
    full fine-tune's pretraining rate, a LoRA needs its own).
"""

from __future__ import annotations

import math

MIN_ROWS_TO_HOLD_OUT = 10
HELD_OUT_SHARE = 0.1
MIN_HELD_OUT = 4
MAX_HELD_OUT = 500

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
BATCH_SHARE = 0.002
MAX_AUTO_BATCH = 256


def held_out_rows(n_rows: int) -> int:
    """How many of ``n_rows`` a job holds out for its evaluation (0: too few to spare)."""
    if n_rows < MIN_ROWS_TO_HOLD_OUT:
        return 0
    return min(MAX_HELD_OUT, max(MIN_HELD_OUT, math.ceil(HELD_OUT_SHARE * n_rows)))


def auto_epochs(n_train: int) -> int:
    n_train = max(1, n_train)
    if n_train * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // n_train)
    if n_train * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_train)
    return TARGET_EPOCHS


def auto_batch_size(n_train: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, round(BATCH_SHARE * n_train)))


AUTO_LEARNING_RATE_MULTIPLIER = 1.0
