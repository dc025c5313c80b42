"""Response shapes of ``GET /reports`` and ``GET /reports/schedules``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ReportInfo(BaseModel):
    id: str  # the report folder name, ``<suite>-<UTC time>``
    object: Literal["evaluation.report"] = "evaluation.report"
    suite: str | None = None
    started_at: str | None = None
    models: list[str] = []
    regressed: bool = False
    headline: list[str] = []
    files: list[str] = []
    url: str  # the HTML page


class ReportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReportInfo]


class ScheduleInfo(BaseModel):
    """One in-service evaluation schedule (``TUNESERVE_EVAL_SCHEDULES``) and its last run."""

    object: Literal["evaluation.schedule"] = "evaluation.schedule"
    cron: str  # UTC
    suite: str
    models: str
    project: str | None = None  # the project it runs for; None: an admin key's run
    next_run_at: str | None = None
    running: bool = False
    runs: int = 0  # runs started since the server started
    skipped: int = 0  # fires skipped: previous run still going, or server not ready
    last_started_at: str | None = None
    last_finished_at: str | None = None
    last_exit_code: int | None = None  # 0 ok, 1 regression, 2 bad input, other: failure


class ScheduleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScheduleInfo]
