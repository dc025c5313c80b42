"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import UserAuth
from service.models.protocol import ModelCard, ModelList
from service.tenancy import scope_of

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request, _: UserAuth) -> ModelList:
    return request.app.state.models_serving.list(scope_of(request))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard,
            response_model_exclude_none=True)
async def retrieve_model(model_id: str, request: Request, _: UserAuth) -> ModelCard:
    return request.app.state.models_serving.get(model_id, scope_of(request))
