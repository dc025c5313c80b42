"""Evaluation schedules run inside the service (``TUNESERVE_EVAL_SCHEDULES``,
``tuneserve serve --eval-schedule``); ``tuneserve eval schedule`` is the standalone mode.

An entry is a cron expression (UTC), a suite and the models to compare. Either form works:

- JSON: ``[{"cron": "0 3 * * *", "suite": "docker-commands", "models": "base,docker-lora"}]``
- compact: ``0 3 * * *|docker-commands|base,docker-lora``; entries separated by ``;`` or
  newlines (one per ``--eval-schedule`` flag).

The server keeps one asyncio task per entry that sleeps until the next cron time and then
runs ``python -m tuneserve.cli eval run SUITE --models MODELS --server <this server>/v1
--output-dir <reports folder>`` as a subprocess in its own process group: an evaluation
never blocks the event loop nor shares the engine's process state, it calls this server
over HTTP like any client. The API key goes to the child in ``TUNESERVE_API_KEY``, never
in argv (which ``ps`` shows to every user). A run still going at the next fire time turns
that fire into a logged skip; a failed run is logged and the schedule goes on; shutdown
cancels the tasks and kills a running evaluation's process group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from evaluation.scheduler import seconds_until_next, validate_cron
from service.process_group import stop_group
from service.reports.protocol import ScheduleInfo, ScheduleList
from tuneserve.errors import UserError

log = logging.getLogger(__name__)

COMPACT_FORM = "CRON|SUITE|MODELS, e.g. '0 3 * * *|docker-commands|base,docker-lora'"


class EvalSchedule(BaseModel):
    """One schedule entry; validated when the settings are read, not at 3 am."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str
    suite: str
    models: str

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            return validate_cron(value.strip())
        except UserError as exc:  # pydantic reports ValueError as a validation error
            raise ValueError(str(exc)) from None

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        from evaluation.suite import load_suite

        try:
            load_suite(value.strip())  # unknown suite or bad YAML fails at startup
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value: object) -> object:
        return ",".join(map(str, value)) if isinstance(value, list) else value

    @field_validator("models")
    @classmethod
    def _models(cls, value: str) -> str:
        models = [m.strip() for m in value.split(",") if m.strip()]
        if not models:
            raise ValueError("models must name at least one model, e.g. 'base,docker-lora'")
        return ",".join(models)

    @property
    def label(self) -> str:
        return f"{self.suite} [{self.cron}] {self.models}"


def parse_schedules(value: object) -> object:
    """Settings input (env string, flag list or JSON) -> a list of entry dicts for pydantic."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return _json(text)
        value = [part for part in re.split(r"[;\n]", text) if part.strip()]
    if isinstance(value, list | tuple):
        entries: list[object] = []
        for item in value:
            if isinstance(item, str) and item.strip().startswith("["):
                entries.extend(parse_schedules(item))  # a JSON list given as one flag
            else:
                entries.append(_entry(item))
        return entries
    return value


def _entry(item: object) -> object:
    if not isinstance(item, str):
        return item
    text = item.strip()
    if text.startswith("{"):
        return _json(text)
    parts = [part.strip() for part in text.split("|")]
    if len(parts) != 3:
        raise ValueError(f"schedule entry {text!r}: want {COMPACT_FORM}")
    return dict(zip(("cron", "suite", "models"), parts, strict=True))


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"eval schedules are not valid JSON: {exc}") from None


# ---- the command a fire runs -------------------------------------------------------------


def local_server_url(host: str, port: int) -> str:
    """This server's ``/v1`` URL as seen from the same machine."""
    # A wildcard bind address is not an address to connect to; the loopback reaches it.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


def eval_command(entry: EvalSchedule, server_url: str, output_dir: Path) -> list[str]:
    """argv of one scheduled run (the ``tuneserve`` console script's module, this Python)."""
    return [
        sys.executable,
        "-m",
        "tuneserve.cli",
        "eval",
        "run",
        entry.suite,
        "--models",
        entry.models,
        "--server",
        server_url,
        "--output-dir",
        str(output_dir),
    ]


def eval_api_key(settings: Any) -> str | None:
    """The key an in-service evaluation calls the server with. Least privilege: evaluation
    only needs inference, so a user key when there is one."""
    keys = [*settings.user_api_keys, *settings.admin_api_keys]
    return keys[0] if keys else None


def app_reports_root(state: Any) -> Path:
    """Where in-service evaluations write reports: the folder ``/reports`` serves."""
    from tuneserve.home import reports_dir

    serving = getattr(state, "reports_serving", None)
    return serving.root if serving is not None else reports_dir()


def eval_env(api_key: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours plus the key, which ``eval run`` reads by default."""
    env = dict(os.environ if base is None else base)
    if api_key:
        env["TUNESERVE_API_KEY"] = api_key
    return env


async def run_subprocess(
    argv: list[str], env: dict[str, str], log_path: Path, kill_grace_s: float = 3.0
) -> int:
    """Run ``argv`` with its output appended to ``log_path``; its exit code. Cancelling
    sends SIGTERM to its process group, SIGKILL after ``kill_grace_s``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(
            f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} "
            f"{' '.join(argv[1:])}\n".encode()
        )
        out.flush()
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # own process group: a cancel reaches all of it
        )
    try:
        return await process.wait()
    except asyncio.CancelledError:
        await stop_group(process, kill_grace_s)
        raise


# ---- the loop ----------------------------------------------------------------------------

Runner = Callable[[EvalSchedule], Awaitable[int]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScheduleState:
    """What ``GET /reports/schedules`` shows for one entry."""

    entry: EvalSchedule
    next_run_at: datetime | None = None
    running: bool = False
    runs: int = 0
    skipped: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_exit_code: int | None = None


class EvalScheduler:
    """One task per entry: sleep until the cron time, start ``runner(entry)`` in the
    background (so the next fire is on time even during a long run), repeat.

    ``clock``/``sleep`` are injectable so tests run without waiting for the wall clock;
    ``ready`` says whether the server can answer (a fire before that is skipped).
    """

    def __init__(
        self,
        entries: list[EvalSchedule],
        runner: Runner,
        *,
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.states = [ScheduleState(entry) for entry in entries]
        self._runner = runner
        self._ready = ready
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

    def describe(self) -> ScheduleList:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat(timespec="seconds") if t else None

        return ScheduleList(
            data=[
                ScheduleInfo(
                    cron=s.entry.cron,
                    suite=s.entry.suite,
                    models=s.entry.models,
                    next_run_at=iso(s.next_run_at),
                    running=s.running,
                    runs=s.runs,
                    skipped=s.skipped,
                    last_started_at=iso(s.last_started_at),
                    last_finished_at=iso(s.last_finished_at),
                    last_exit_code=s.last_exit_code,
                )
                for s in self.states
            ]
        )

    async def _loop(self, state: ScheduleState) -> None:
        entry = state.entry
        run: asyncio.Task | None = None
        last: datetime | None = None
        try:
            while True:
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
        finally:
            if run is not None and not run.done():
                run.cancel()  # kills the subprocess (run_subprocess)
                await asyncio.gather(run, return_exceptions=True)

    async def _run(self, state: ScheduleState) -> None:
        entry = state.entry
        state.running = True
        state.runs += 1
        state.last_started_at = self._clock()
        log.info("evaluation %s: started", entry.label)
        try:
            code = await self._runner(entry)
        except Exception:  # keep the schedule alive; the log has the details
            log.exception("evaluation %s: crashed", entry.label)
            code = 1
        finally:
            state.running = False
            state.last_finished_at = self._clock()
        state.last_exit_code = code
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(
            level,
            "evaluation %s: finished with exit code %d%s",
            entry.label,
            code,
            " (1 = regression)" if code == 1 else "",
        )


def scheduler_for_app(state: Any) -> EvalScheduler:
    """The scheduler of a ``build_app`` app: runs call this server, write into its reports
    folder and log to ``$TUNESERVE_HOME/eval-schedules/<n>.log``."""
    from tuneserve.home import tuneserve_home

    settings = state.settings
    server_url = local_server_url(settings.host, settings.port)
    api_key = eval_api_key(settings)
    index = {id(entry): i for i, entry in enumerate(settings.eval_schedules)}

    async def runner(entry: EvalSchedule) -> int:
        log_path = tuneserve_home() / "eval-schedules" / f"{index.get(id(entry), 0)}.log"
        argv = eval_command(entry, server_url, app_reports_root(state))
        return await run_subprocess(argv, eval_env(api_key), log_path)

    return EvalScheduler(
        settings.eval_schedules, runner, ready=lambda: bool(getattr(state, "ready", False))
    )
