"""In-service evaluation schedules: settings parsing, the subprocess command, and the async
loop with an injected clock/sleep (no wall-clock waiting, no engine)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from evaluation.scheduler import EvalScheduler
from service.reports.eval_subprocess import (
    eval_command,
    eval_env,
    local_server_url,
    run_subprocess,
)
from service.reports.schedule import describe
from service.reports.schedule_config import EvalSchedule
from service.settings import Settings
from tuneserve.errors import UserError

ENTRY = EvalSchedule(cron="*/5 * * * *", suite="docker-commands", models="base,docker-lora")


# ---- settings ----------------------------------------------------------------------------


def test_env_compact_form_with_several_entries(monkeypatch):
    monkeypatch.setenv(
        "TUNESERVE_EVAL_SCHEDULES",
        "0 3 * * *|docker-commands|base, docker-lora ; 30 4 * * 1|hotel|base,hotel-lora",
    )
    entries = Settings().eval_schedules
    assert entries == [
        EvalSchedule(cron="0 3 * * *", suite="docker-commands", models="base,docker-lora"),
        EvalSchedule(cron="30 4 * * 1", suite="hotel", models="base,hotel-lora"),
    ]


def test_env_json_form(monkeypatch):
    monkeypatch.setenv(
        "TUNESERVE_EVAL_SCHEDULES",
        '[{"cron": "0 3 * * *", "suite": "docker-commands", "models": "base,docker-lora"}]',
    )
    assert Settings().eval_schedules[0].models == "base,docker-lora"
    monkeypatch.setenv("TUNESERVE_EVAL_SCHEDULES", "")
    assert Settings().eval_schedules == []


def _serve_settings(*argv: str) -> Settings:
    from service.cli import build_settings
    from tuneserve.cli import build_parser

    return build_settings(build_parser().parse_args(["serve", *argv]))


def test_repeatable_flag_replaces_the_environment(monkeypatch):
    monkeypatch.setenv("TUNESERVE_EVAL_SCHEDULES", "0 1 * * *|hotel|base")
    settings = _serve_settings(
        "--eval-schedule",
        "0 3 * * *|docker-commands|base,docker-lora",
        "--eval-schedule",
        "0 4 * * *|hotel|base,hotel-lora",
    )
    assert [(e.cron, e.suite) for e in settings.eval_schedules] == [
        ("0 3 * * *", "docker-commands"),
        ("0 4 * * *", "hotel"),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("every day|docker-commands|base", "eval_schedules.0.cron: .*invalid cron expression"),
        ("0 3 * * *|docker-commands", "want CRON|SUITE|MODELS"),
        ("0 3 * * *|no-such-suite|base", "eval_schedules.0.suite: .*unknown suite"),
        ("0 3 * * *|docker-commands| , ", "eval_schedules.0.models: .*at least one model"),
        ('[{"cron": "0 3 * * *"', "not valid JSON"),
        ('[{"cron": "0 3 * * *", "suite": "hotel", "models": "base", "x": 1}]', "x: Extra"),
    ],
)
def test_bad_entries_are_one_line_errors_at_startup(value, message):
    with pytest.raises(UserError, match=message) as info:
        _serve_settings("--eval-schedule", value)
    assert "\n" not in str(info.value)


def test_schedules_need_a_fixed_port():
    with pytest.raises(UserError, match="fixed port"):
        _serve_settings("--port", "0", "--eval-schedule", "0 3 * * *|hotel|base")


def _keys_file(tmp_path: Path, admin: bool = True) -> Path:
    keys = [{"key": "a" * 24, "project": "a"}, {"key": "b" * 24, "project": "b"}]
    if admin:
        keys.append({"key": "z" * 24, "project": "ops", "role": "admin"})
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


async def test_each_schedule_runs_with_its_projects_key(tmp_path, monkeypatch):
    """An entry naming a project calls the server with that project's key (so its report
    names only models the project may use, and is that project's); one without a project
    with an admin key."""
    import service.reports.schedule as schedule

    settings = _serve_settings("--api-keys-file", str(_keys_file(tmp_path)),
                               "--eval-schedule", "0 3 * * *|hotel|base,ft:x|b",
                               "--eval-schedule", "0 4 * * *|hotel|base")
    assert [e.project for e in settings.eval_schedules] == ["b", None]
    sent: list[str | None] = []

    async def record(argv, env, log_path):  # the subprocess itself: tests above
        sent.append(env.get("TUNESERVE_API_KEY"))
        return 0

    monkeypatch.setattr(schedule, "run_subprocess", record)
    scheduler = schedule.scheduler_for_app(SimpleNamespace(settings=settings, ready=True))
    for entry in settings.eval_schedules:
        await scheduler._runner(entry)
    assert sent == ["b" * 24, "z" * 24]
    assert [i.project for i in schedule.describe(scheduler).data] == ["b", None]


def test_a_schedule_without_a_key_to_run_with_is_refused_at_startup(tmp_path):
    keys = str(_keys_file(tmp_path, admin=False))
    with pytest.raises(UserError, match="without a project needs an admin key"):
        _serve_settings("--api-keys-file", keys, "--eval-schedule", "0 4 * * *|hotel|base")
    with pytest.raises(UserError, match="project 'c' needs a user key of project 'c'"):
        _serve_settings("--api-keys-file", keys, "--eval-schedule", "0 4 * * *|hotel|base|c")
    # Without keys (a local server) a schedule needs none.
    assert _serve_settings("--eval-schedule", "0 4 * * *|hotel|base").eval_schedules


# ---- the command -------------------------------------------------------------------------


def test_command_runs_eval_run_against_this_server(tmp_path):
    url = local_server_url("0.0.0.0", 8123)
    assert url == "http://127.0.0.1:8123/v1"
    assert local_server_url("::", 80) == "http://[::1]:80/v1"
    assert local_server_url("10.0.0.5", 80) == "http://10.0.0.5:80/v1"
    argv = eval_command(ENTRY, url, tmp_path / "reports")
    assert argv == [
        sys.executable,
        "-m",
        "tuneserve.cli",
        "eval",
        "run",
        "docker-commands",
        "--models",
        "base,docker-lora",
        "--server",
        "http://127.0.0.1:8123/v1",
        "--output-dir",
        str(tmp_path / "reports"),
    ]
    # The key travels in the environment (eval run's --api-key default), never in argv.
    assert eval_env("user-key-0123456789", {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "TUNESERVE_API_KEY": "user-key-0123456789",
    }
    assert eval_env(None, {"PATH": "/bin"}) == {"PATH": "/bin"}


def test_the_command_parses_as_eval_run(tmp_path):
    from tuneserve.cli import build_parser

    argv = eval_command(ENTRY, "http://127.0.0.1:8000/v1", tmp_path)
    args = build_parser().parse_args(argv[3:])
    assert (args.eval_command, args.suite, args.models) == (
        "run",
        "docker-commands",
        "base,docker-lora",
    )
    assert args.server == "http://127.0.0.1:8000/v1" and args.output_dir == Path(tmp_path)


async def test_subprocess_exit_code_and_log(tmp_path):
    log_path = tmp_path / "logs" / "0.log"
    code = await run_subprocess(
        [
            sys.executable,
            "-c",
            "import os, sys; print(os.environ['TUNESERVE_API_KEY']); sys.exit(3)",
        ],
        eval_env("key-from-env"),
        log_path,
    )
    assert code == 3
    assert "key-from-env" in log_path.read_text()


async def test_cancel_kills_the_subprocess(tmp_path):
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    task = asyncio.create_task(
        run_subprocess([sys.executable, "-c", script], eval_env(None), tmp_path / "0.log")
    )
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "child did not start"
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not Path(f"/proc/{pid}").exists()  # reaped, not left running


# ---- the loop ----------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the test lets a pending sleep finish."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []
        self._gate: asyncio.Queue[None] = asyncio.Queue()

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await self._gate.get()
        self.now += timedelta(seconds=seconds)

    async def advance(self) -> None:
        """Finish the pending sleep and let the fire it leads to run."""
        self._gate.put_nowait(None)
        await _settle()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _scheduler(fake: FakeTime, runner, ready=lambda: True) -> EvalScheduler:
    scheduler = EvalScheduler([ENTRY], runner, ready=ready, clock=fake.clock, sleep=fake.sleep)
    scheduler.start()
    return scheduler


async def test_fires_at_cron_times():
    fake = FakeTime(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    fired: list[datetime] = []

    async def runner(entry: EvalSchedule) -> int:
        assert entry == ENTRY
        fired.append(fake.now)
        return 0

    scheduler = _scheduler(fake, runner)
    await _settle()
    state = scheduler.states[0]
    assert fake.slept == [270.0] and state.next_run_at == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    await fake.advance()
    await fake.advance()
    assert fired == [
        datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 10, tzinfo=UTC),
    ]
    assert fake.slept == [270.0, 300.0, 300.0]
    assert (state.runs, state.skipped, state.last_exit_code, state.running) == (2, 0, 0, False)
    listed = describe(scheduler).data[0]
    assert listed.next_run_at == "2026-01-01T00:15:00+00:00" and listed.runs == 2
    await scheduler.stop()


async def test_overlapping_fire_is_skipped_with_a_log_line(caplog):
    fake = FakeTime(datetime(2026, 1, 1, tzinfo=UTC))
    release = asyncio.Event()
    calls = 0

    async def runner(entry: EvalSchedule) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 0

    scheduler = _scheduler(fake, runner)
    state = scheduler.states[0]
    await _settle()
    await fake.advance()  # 00:05 starts a run that outlasts the interval
    assert calls == 1 and state.running
    with caplog.at_level(logging.WARNING, logger="evaluation.scheduler"):
        await fake.advance()  # 00:10: still running -> skipped
    assert calls == 1 and state.skipped == 1
    assert "skipped, the previous run is still going" in caplog.text
    release.set()
    await _settle()
    assert not state.running and state.last_exit_code == 0
    await fake.advance()  # 00:15 runs again
    assert calls == 2
    await scheduler.stop()


async def test_failing_run_does_not_stop_the_schedule():
    fake = FakeTime(datetime(2026, 1, 1, tzinfo=UTC))
    outcomes = iter([RuntimeError("server down"), 3, 0])
    codes: list[int | None] = []

    async def runner(entry: EvalSchedule) -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    scheduler = _scheduler(fake, runner)
    await _settle()
    for _ in range(3):
        await fake.advance()
        codes.append(scheduler.states[0].last_exit_code)
    assert codes == [1, 3, 0] and scheduler.states[0].runs == 3
    await scheduler.stop()


async def test_fire_before_ready_is_skipped():
    fake = FakeTime(datetime(2026, 1, 1, tzinfo=UTC))
    ready = False
    calls = 0

    async def runner(entry: EvalSchedule) -> int:
        nonlocal calls
        calls += 1
        return 0

    scheduler = _scheduler(fake, runner, ready=lambda: ready)
    await _settle()
    await fake.advance()
    assert calls == 0 and scheduler.states[0].skipped == 1
    ready = True
    await fake.advance()
    assert calls == 1
    await scheduler.stop()


async def test_stop_cancels_the_loop_and_the_running_evaluation():
    fake = FakeTime(datetime(2026, 1, 1, tzinfo=UTC))
    cancelled = asyncio.Event()

    async def runner(entry: EvalSchedule) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    scheduler = _scheduler(fake, runner)
    await _settle()
    await fake.advance()
    tasks = list(scheduler.tasks)
    assert scheduler.states[0].running
    await asyncio.wait_for(scheduler.stop(), 5)
    assert cancelled.is_set() and all(t.done() for t in tasks) and scheduler.tasks == []
    assert not scheduler.states[0].running
