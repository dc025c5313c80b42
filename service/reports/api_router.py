"""``GET /reports`` (list), ``GET /reports/schedules`` (in-service evaluation schedules,
read-only), ``GET /reports/{id}/{file}`` (a report page or record) and the API's
evaluation runs: ``POST /v1/evaluations`` (start one), ``GET /v1/evaluations[/{id}]``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from service.deps import UserAuth, presented_key
from service.errors import ErrorResponse
from service.reports.protocol import ReportList, ScheduleList
from service.reports.runs import EvalRun, EvalRunList, EvalRunRequest, EvalRuns, server_url_of
from service.reports.schedule import describe
from service.reports.serving import ReportsServing
from service.tenancy import in_scope, report_visible, scope_of

router = APIRouter(tags=["reports"])


def _serving(request: Request) -> ReportsServing:
    serving = getattr(request.app.state, "reports_serving", None)
    if serving is None:
        from tuneserve.home import reports_dir

        serving = request.app.state.reports_serving = ReportsServing(reports_dir())
    return serving


def _visible(request: Request):
    """The caller's report filter: every model a report names must be one its project may
    use (admins, and a server without keys, see all)."""
    scope = scope_of(request)
    return None if scope is None else (
        lambda models: report_visible(request.app.state, models, scope))


@router.get("/reports", response_model=ReportList)
async def list_reports(request: Request, _: UserAuth, limit: int = 100) -> ReportList:
    return _serving(request).list(limit=max(1, min(limit, 1000)), visible=_visible(request))


# Declared before /reports/{report_id}, which would otherwise take "schedules" as an id.
@router.get("/reports/schedules", response_model=ScheduleList)
async def list_schedules(request: Request, _: UserAuth) -> ScheduleList:
    scheduler = getattr(request.app.state, "eval_scheduler", None)
    if scheduler is None:
        return ScheduleList(data=[])
    scope, state = scope_of(request), request.app.state
    # A project sees its own entries, and an admin's whose models it may all use.
    return describe(scheduler, lambda entry: scope is None or (
        in_scope(entry.project, scope) if entry.project else
        report_visible(state, [state.base_id if m == "base" else m for m in entry.model_ids],
                       scope)))


@router.get("/reports/{report_id}", include_in_schema=False)
async def report_index(report_id: str, request: Request, _: UserAuth) -> RedirectResponse:
    _serving(request).file(report_id, "report.html", _visible(request))  # 404 unless seen
    return RedirectResponse(f"/reports/{report_id}/report.html")


@router.get(
    "/reports/{report_id}/{filename}",
    responses={404: {"model": ErrorResponse}},
)
async def report_file(report_id: str, filename: str, request: Request, _: UserAuth) -> FileResponse:
    path, media_type = _serving(request).file(report_id, filename, _visible(request))
    return FileResponse(path, media_type=media_type)


def _runs(request: Request) -> EvalRuns:
    runs = getattr(request.app.state, "eval_runs", None)
    if runs is None:
        runs = request.app.state.eval_runs = EvalRuns(request.app.state)
    return runs


def _owner(request: Request, role: str) -> tuple[str, bool]:
    """(the caller's project, whether it sees every project's runs)."""
    return getattr(request.state, "project", "default"), role in ("admin", "anonymous")


@router.post(
    "/v1/evaluations",
    response_model=EvalRun,
    status_code=202,
    responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
               404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def start_evaluation(body: EvalRunRequest, request: Request, role: UserAuth) -> EvalRun:
    """Start an evaluation run of ``suite`` on ``models`` (the first is the baseline) in a
    worker subprocess that calls this server with the caller's key; poll its id."""
    project, _ = _owner(request, role)
    return _runs(request).start(body, project, scope_of(request), presented_key(request),
                                server_url_of(request))


@router.get("/v1/evaluations", response_model=EvalRunList)
async def list_evaluations(request: Request, role: UserAuth) -> EvalRunList:
    return EvalRunList(data=_runs(request).list(*_owner(request, role)))


@router.get(
    "/v1/evaluations/{run_id}", response_model=EvalRun, responses={404: {"model": ErrorResponse}}
)
async def get_evaluation(run_id: str, request: Request, role: UserAuth) -> EvalRun:
    return _runs(request).get(run_id, *_owner(request, role))
