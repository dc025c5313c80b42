"""``GET /reports`` (list), ``GET /reports/schedules`` (in-service evaluation schedules,
read-only) and ``GET /reports/{id}/{file}`` (a report page or record)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from service.deps import UserAuth
from service.errors import ErrorResponse
from service.reports.protocol import ReportList, ScheduleList
from service.reports.schedule import describe
from service.reports.serving import ReportsServing

router = APIRouter(tags=["reports"])


def _serving(request: Request) -> ReportsServing:
    serving = getattr(request.app.state, "reports_serving", None)
    if serving is None:
        from tuneserve.home import reports_dir

        serving = request.app.state.reports_serving = ReportsServing(reports_dir())
    return serving


@router.get("/reports", response_model=ReportList)
async def list_reports(request: Request, _: UserAuth, limit: int = 100) -> ReportList:
    return _serving(request).list(limit=max(1, min(limit, 1000)))


# Declared before /reports/{report_id}, which would otherwise take "schedules" as an id.
@router.get("/reports/schedules", response_model=ScheduleList)
async def list_schedules(request: Request, _: UserAuth) -> ScheduleList:
    scheduler = getattr(request.app.state, "eval_scheduler", None)
    return describe(scheduler) if scheduler is not None else ScheduleList(data=[])


@router.get("/reports/{report_id}", include_in_schema=False)
async def report_index(report_id: str, request: Request, _: UserAuth) -> RedirectResponse:
    _serving(request).file(report_id, "report.html")  # 404 unless it exists
    return RedirectResponse(f"/reports/{report_id}/report.html")


@router.get(
    "/reports/{report_id}/{filename}",
    responses={404: {"model": ErrorResponse}},
)
async def report_file(report_id: str, filename: str, request: Request, _: UserAuth) -> FileResponse:
    path, media_type = _serving(request).file(report_id, filename)
    return FileResponse(path, media_type=media_type)
