"""Run evaluations on cron expressions: ``EvalScheduler`` is the one loop of both
``tuneserve eval schedule`` and the service's schedules (``service/reports/schedule.py``).

The loop sleeps until the next cron time (croniter), runs the evaluation, logs the outcome
and goes on; a failing run is logged and does not stop the schedule. ``clock``/``sleep``
are injectable so the loop is testable without waiting for wall-clock minutes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

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


class ScheduledEntry(Protocol):
    """What the loop needs of an entry: its cron expression and a name for the log."""

    @property
    def cron(self) -> str: ...

    @property
    def label(self) -> str: ...


Runner = Callable[[Any], Awaitable[int]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScheduleState:
    """One entry's progress (``GET /reports/schedules`` shows it)."""

    entry: Any
    next_run_at: datetime | None = None
    running: bool = False
    runs: int = 0
    skipped: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_exit_code: int | None = None
    exit_codes: list[int] = field(default_factory=list)


class EvalScheduler:
    """The schedule loop of both the service and ``tuneserve eval schedule``: one task per
    entry sleeps until the cron time, starts ``runner(entry)`` in the background (so the
    next fire is on time even during a long run; a fire while the run is still going is a
    logged skip), repeat. A failing run is logged and the schedule goes on.

    ``max_runs`` stops an entry after that many runs (the CLI's ``--max-runs``);
    ``clock``/``sleep`` are injectable so tests run without waiting for the wall clock;
    ``ready`` says whether the server can answer (a fire before that is skipped).
    """

    def __init__(
        self,
        entries: Sequence[ScheduledEntry],
        runner: Runner,
        *,
        ready: Callable[[], bool] = lambda: True,
        max_runs: int | None = None,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.states = [ScheduleState(entry) for entry in entries]
        self._runner = runner
        self._ready = ready
        self._max_runs = max_runs
        self._clock = clock
        self._sleep = sleep
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for i, state in enumerate(self.states):
            self.tasks.append(asyncio.create_task(self._loop(state), name=f"eval-schedule-{i}"))
        if self.states:
            log.info("%d evaluation schedule(s) started", len(self.states))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def run(self) -> list[int]:
        """Run until every entry made ``max_runs`` runs; their exit codes (the CLI)."""
        self.start()
        try:
            await asyncio.gather(*self.tasks)
        finally:
            await self.stop()
        return [code for state in self.states for code in state.exit_codes]

    async def _loop(self, state: ScheduleState) -> None:
        entry = state.entry
        run: asyncio.Task | None = None
        last: datetime | None = None
        started = 0  # counted here: a run task counts itself only once it first runs
        try:
            while self._max_runs is None or started < self._max_runs:
                when, wait = seconds_until_next(entry.cron, self._clock(), last)
                state.next_run_at = last = when
                log.info(
                    "evaluation %s: next run at %s (in %.0f s)",
                    entry.label,
                    when.isoformat(timespec="seconds"),
                    wait,
                )
                await self._sleep(wait)
                if run is not None and not run.done():
                    state.skipped += 1
                    log.warning(
                        "evaluation %s: skipped, the previous run is still going", entry.label
                    )
                elif not self._ready():
                    state.skipped += 1
                    log.warning("evaluation %s: skipped, the server is not ready", entry.label)
                else:
                    run = asyncio.create_task(self._run(state))
                    started += 1
            if run is not None:
                await run  # the last of max_runs
        finally:
            if run is not None and not run.done():
                run.cancel()  # the runner kills its subprocess
                await asyncio.gather(run, return_exceptions=True)

    async def _run(self, state: ScheduleState) -> None:
        entry = state.entry
        state.running = True
        state.runs += 1
        state.last_started_at = self._clock()
        log.info("evaluation %s: started", entry.label)
        try:
            code = await self._runner(entry)
        except UserError as exc:
            log.error("evaluation %s: failed: %s", entry.label, exc)
            code = 2
        except Exception:  # keep the schedule alive; the log has the details
            log.exception("evaluation %s: crashed", entry.label)
            code = 1
        finally:
            state.running = False
            state.last_finished_at = self._clock()
        state.last_exit_code = code
        state.exit_codes.append(code)
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(
            level,
            "evaluation %s: finished with exit code %d%s",
            entry.label,
            code,
            " (1 = regression)" if code == 1 else "",
        )
