"""Run suites on a cron expression (standalone ``tuneserve eval schedule``).

``seconds_until_next`` is shared with the in-service schedules (``service/reports/schedule.py``).

The loop sleeps until the next cron time (croniter), runs the suite, logs the outcome and
goes on; a failing run is logged and does not stop the schedule. ``clock``/``sleep`` are
injectable so the loop is testable without waiting for wall-clock minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter

from tuneserve.errors import UserError

log = logging.getLogger(__name__)


def validate_cron(expression: str) -> str:
    """The expression, or UserError when croniter cannot parse it."""
    if not croniter.is_valid(expression):
        raise UserError(f"invalid cron expression {expression!r} (e.g. '0 3 * * *' = 03:00 daily)")
    return expression


def next_times(expression: str, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``start``."""
    it = croniter(validate_cron(expression), start)
    return [it.get_next(datetime) for _ in range(count)]


def seconds_until_next(
    expression: str, now: datetime, previous: datetime | None = None
) -> tuple[datetime, float]:
    """The next fire time strictly after ``now`` and the seconds to wait for it (>= 0).

    Counted from the ``previous`` fire time at least, so a clock that reads a hair early
    after the sleep cannot fire the same minute twice.
    """
    start = now if previous is None else max(now, previous)
    when = croniter(expression, start).get_next(datetime)
    return when, max(0.0, (when - start).total_seconds())


def run_schedule(
    expression: str,
    job: Callable[[], int],
    *,
    max_runs: int | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Call ``job`` at each cron time; returns the exit codes of the runs made.

    Stops after ``max_runs`` runs (forever when None). ``job`` returns an exit code (0 ok,
    non-zero regression/failure); exceptions are logged as failed runs (code 1).
    """
    validate_cron(expression)
    codes: list[int] = []
    last: datetime | None = None
    while max_runs is None or len(codes) < max_runs:
        when, wait = seconds_until_next(expression, clock(), last)
        last = when
        log.info("next evaluation at %s (in %.0f s)", when.isoformat(timespec="seconds"), wait)
        if wait > 0:
            sleep(wait)
        try:
            code = job()
        except UserError as exc:
            log.error("scheduled evaluation failed: %s", exc)
            code = 2
        except Exception:  # keep the schedule alive; the log has the details
            log.exception("scheduled evaluation crashed")
            code = 1
        codes.append(code)
        log.info("scheduled evaluation finished with exit code %d", code)
    return codes
