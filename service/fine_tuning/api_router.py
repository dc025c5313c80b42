"""Routes of ``/v1/fine_tuning/jobs`` (thin: parse, call FineTuningService, return).

The service behind them is the jobs runtime's (``service.jobs.runtime.jobs_runtime``), which
``build_app`` runs in its lifespan. A job belongs to its training file's project (the
creating user key's own); other projects' keys get 404 (``service.tenancy``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service import audit
from service.deps import JobCreatorAuth, UserAuth
from service.errors import ErrorResponse
from service.fine_tuning.protocol import (
    CheckpointList,
    EventList,
    FineTuningJob,
    JobCreateRequest,
    JobList,
)
from service.fine_tuning.serving import FineTuningService
from service.tenancy import scope_of

router = APIRouter(
    prefix="/v1/fine_tuning/jobs",
    tags=["fine-tuning"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)


def fine_tuning(request: Request) -> FineTuningService:
    return request.app.state.fine_tuning


@router.post("", response_model=FineTuningJob)
def create_job(request: Request, _: JobCreatorAuth, body: JobCreateRequest) -> FineTuningJob:
    job = fine_tuning(request).create(body, scope_of(request))
    audit.record(request, "job.create", job.id, model=body.model,
                 training_file=body.training_file)
    return job


@router.get("", response_model=JobList)
def list_jobs(
    request: Request, _: UserAuth, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    return fine_tuning(request).list(after=after, limit=limit, project=scope_of(request))


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(request: Request, _: UserAuth, job_id: str) -> FineTuningJob:
    return fine_tuning(request).retrieve(job_id, scope_of(request))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(request: Request, _: UserAuth, job_id: str) -> FineTuningJob:
    job = await fine_tuning(request).cancel(job_id, scope_of(request))
    audit.record(request, "job.cancel", job_id)
    return job


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    request: Request, _: UserAuth, job_id: str, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> EventList:
    return fine_tuning(request).events(job_id, after=after, limit=limit,
                                       project=scope_of(request))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    request: Request, _: UserAuth, job_id: str, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CheckpointList:
    return fine_tuning(request).checkpoints(job_id, after=after, limit=limit,
                                            project=scope_of(request))
