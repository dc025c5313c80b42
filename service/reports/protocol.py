"""Response shapes of ``GET /reports``."""

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
