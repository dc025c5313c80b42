"""Routes of ``/v1/batches`` (thin: parse, call BatchesService, return)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.batches.protocol import Batch, BatchCreateRequest, BatchList
from service.batches.serving import BatchesService
from service.deps import UserAuth
from service.errors import ErrorResponse

router = APIRouter(prefix="/v1/batches", tags=["batches"],
                   responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})


def batches_service(request: Request) -> BatchesService:
    return request.app.state.batches


@router.post("", response_model=Batch)
async def create_batch(request: Request, _: UserAuth, body: BatchCreateRequest) -> Batch:
    return await batches_service(request).create(body)


@router.get("", response_model=BatchList)
async def list_batches(
    request: Request, _: UserAuth, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    return await batches_service(request).list(after=after, limit=limit)


@router.get("/{batch_id}", response_model=Batch)
async def retrieve_batch(request: Request, _: UserAuth, batch_id: str) -> Batch:
    return await batches_service(request).retrieve(batch_id)


@router.post("/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(request: Request, _: UserAuth, batch_id: str) -> Batch:
    return await batches_service(request).cancel(batch_id)
