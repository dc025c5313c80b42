"""Cron scheduling with an injected clock (no wall-clock waiting)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from evaluation.scheduler import EvalScheduler, next_times, validate_cron
from tuneserve.errors import UserError


def test_next_times():
    start = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)
    times = next_times("0 3 * * *", start, 2)
    assert times == [datetime(2026, 1, 1, 3, 0, tzinfo=UTC), datetime(2026, 1, 2, 3, 0, tzinfo=UTC)]


def test_invalid_cron_is_a_user_error():
    with pytest.raises(UserError, match="invalid cron"):
        validate_cron("every day")


async def test_cli_loop_stops_after_max_runs_and_survives_failures():
    # The loop `tuneserve eval schedule` runs (the service's loop too), as the CLI drives it.
    now = [datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += timedelta(seconds=seconds)
        await asyncio.sleep(0)  # as a real sleep does, let the started run go

    outcomes = iter([0, RuntimeError("server down"), UserError("suite gone"), 1])

    async def runner(entry) -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    entry = SimpleNamespace(cron="*/5 * * * *", label="test")
    scheduler = EvalScheduler([entry], runner, max_runs=4, clock=lambda: now[0], sleep=sleep)
    codes = await scheduler.run()
    assert codes == [0, 1, 2, 1]
    assert slept == [270.0, 300.0, 300.0, 300.0]
