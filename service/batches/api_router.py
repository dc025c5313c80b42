"""Routes of ``/v1/batches`` (thin: parse, call BatchesService, return).

A batch belongs to its input file's project (the creating user key's own); other
projects' keys get 404 as if it did not exist; an admin key sees every project's batches.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service import audit
from service.batches.protocol import Batch, BatchCreateRequest, BatchList
from service.batches.serving import BatchesService
from service.deps import UserAuth
from service.errors import ErrorResponse
from service.tenancy import scope_of

router = APIRouter(prefix="/v1/batches", tags=["batches"],
                   responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})


def batches_service(request: Request) -> BatchesService:
    return request.app.state.batches


@router.post("", response_model=Batch)
async def create_batch(request: Request, _: UserAuth, body: BatchCreateRequest) -> Batch:
    batch = await batches_service(request).create(body, scope_of(request))
    audit.record(request, "batch.create", batch.id, input_file_id=body.input_file_id)
    return batch


@router.get("", response_model=BatchList)
async def list_batches(
    request: Request, _: UserAuth, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    return await batches_service(request).list(after=after, limit=limit,
                                               project=scope_of(request))


@router.get("/{batch_id}", response_model=Batch)
async def retrieve_batch(request: Request, _: UserAuth, batch_id: str) -> Batch:
    return await batches_service(request).retrieve(batch_id, scope_of(request))


@router.post("/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(request: Request, _: UserAuth, batch_id: str) -> Batch:
    batch = await batches_service(request).cancel(batch_id, scope_of(request))
    audit.record(request, "batch.cancel", batch_id)
    return batch
