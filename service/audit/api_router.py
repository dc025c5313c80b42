"""``GET /v1/audit``: the newest audit entries (admin key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.deps import AdminAuth
from service.errors import ErrorResponse

router = APIRouter(tags=["audit"], responses={401: {"model": ErrorResponse},
                                              403: {"model": ErrorResponse}})


@router.get("/v1/audit")
async def list_audit(request: Request, _: AdminAuth,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.audit.recent(limit)}
