"""Evaluation schedules inside the service: ``build_app`` starts ``scheduler_for_app``'s
scheduler in its lifespan. The entries come from the settings
(``service.reports.schedule_config``), each fire runs an evaluation subprocess
(``service.reports.eval_subprocess``) and the loop is ``evaluation.scheduler.EvalScheduler``,
the one ``tuneserve eval schedule`` runs too. A run still going at the next fire time turns
that fire into a logged skip; a failed run is logged and the schedule goes on; shutdown
cancels the tasks and kills a running evaluation's process group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluation.scheduler import EvalScheduler
from service.reports.eval_subprocess import (
    app_reports_root,
    eval_command,
    eval_env,
    local_server_url,
    run_subprocess,
)
from service.reports.protocol import ScheduleInfo, ScheduleList
from service.reports.schedule_config import EvalSchedule
from service.tenancy import schedule_eval_key


def scheduler_for_app(state: Any) -> EvalScheduler:
    """The scheduler of a ``build_app`` app: runs call this server, write into its reports
    folder and log to ``$TUNESERVE_HOME/eval-schedules/<n>.log``."""
    from tuneserve.home import tuneserve_home

    settings = state.settings
    server_url = local_server_url(settings.host, settings.port)
    index = {id(entry): i for i, entry in enumerate(settings.eval_schedules)}
    # Each entry with its project's key (an admin key without one): it sees that project's
    # models, and its report names only them. Checked when the settings were read.
    keys = {id(entry): schedule_eval_key(settings, entry.project)
            for entry in settings.eval_schedules}

    async def runner(entry: EvalSchedule) -> int:
        log_path = tuneserve_home() / "eval-schedules" / f"{index.get(id(entry), 0)}.log"
        argv = eval_command(entry, server_url, app_reports_root(state))
        return await run_subprocess(argv, eval_env(keys.get(id(entry))), log_path)

    return EvalScheduler(
        settings.eval_schedules, runner, ready=lambda: bool(getattr(state, "ready", False))
    )


def describe(scheduler: EvalScheduler,
             visible: Callable[[EvalSchedule], bool] = lambda entry: True) -> ScheduleList:
    """What ``GET /reports/schedules`` shows: the entries ``visible`` accepts."""
    def iso(t) -> str | None:
        return t.isoformat(timespec="seconds") if t else None

    return ScheduleList(
        data=[
            ScheduleInfo(
                cron=s.entry.cron,
                suite=s.entry.suite,
                models=s.entry.models,
                project=s.entry.project,
                next_run_at=iso(s.next_run_at),
                running=s.running,
                runs=s.runs,
                skipped=s.skipped,
                last_started_at=iso(s.last_started_at),
                last_finished_at=iso(s.last_finished_at),
                last_exit_code=s.last_exit_code,
            )
            for s in scheduler.states
            if visible(s.entry)
        ]
    )
