"""Cron scheduling with an injected clock (no wall-clock waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evaluation.scheduler import next_times, run_schedule, validate_cron
from tuneserve.errors import UserError


def test_next_times():
    start = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)
    times = next_times("0 3 * * *", start, 2)
    assert times == [datetime(2026, 1, 1, 3, 0, tzinfo=UTC), datetime(2026, 1, 2, 3, 0, tzinfo=UTC)]


def test_invalid_cron_is_a_user_error():
    with pytest.raises(UserError, match="invalid cron"):
        validate_cron("every day")


def test_loop_sleeps_until_each_fire_time_and_survives_failures():
    now = [datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += timedelta(seconds=seconds)

    outcomes = iter([0, RuntimeError("server down"), 1])

    def job() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    codes = run_schedule("*/5 * * * *", job, max_runs=3, clock=lambda: now[0], sleep=sleep)
    assert codes == [0, 1, 1]
    assert slept == [270.0, 300.0, 300.0]
