"""Alias routes: list and read with a user key; promote, roll back and delete with an
admin key (each is one call, and each is recorded with its reason). A promoted adapter is
shared; a user key does not see decisions about other projects' private adapters (the
gate's refusals name them), nor another project's aliases (a job's promotion makes an alias
owned by its project: ``service.tenancy``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import audit
from service.aliases.protocol import (
    Alias,
    AliasDecision,
    AliasList,
    PromoteRequest,
    RollbackRequest,
)
from service.deps import AdminAuth, UserAuth
from service.errors import ErrorResponse, NotFound
from service.tenancy import alias_visible, scope_of

router = APIRouter(tags=["aliases"])
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409)}


def _registry(request: Request):
    return request.app.state.registry


def _shown(registry, adapter: str | None, scope: str | None) -> bool:
    """Whether a decision about ``adapter`` may be shown to ``scope`` (a removed adapter's
    owner is unknown: admins only)."""
    if scope is None or adapter is None:
        return True
    record = registry.get(adapter)
    return record is not None and record.visible_to(scope)


def _alias(registry, name: str, scope: str | None = None) -> Alias:
    if not alias_visible(registry, name, scope):  # another project's alias: as if absent
        raise NotFound(f"no alias named {name!r}", param="alias", code="alias_not_found")
    target = registry.aliases.target(name)
    decisions = [AliasDecision(**d.to_dict()) for d in registry.aliases.decisions(name)
                 if _shown(registry, d.adapter, scope)]
    if target is None and not decisions:
        raise NotFound(f"no alias named {name!r}", param="alias", code="alias_not_found")
    return Alias(name=name, adapter=target, decisions=decisions)


@router.get("/v1/aliases", response_model=AliasList)
async def list_aliases(request: Request, _: UserAuth) -> AliasList:
    registry, scope = _registry(request), scope_of(request)
    return AliasList(data=[Alias(name=n, adapter=a) for n, a in registry.aliases.all().items()
                           if alias_visible(registry, n, scope)])


@router.get("/v1/aliases/{name}", response_model=Alias, responses=_ERRORS)
async def get_alias(name: str, request: Request, _: UserAuth) -> Alias:
    return _alias(_registry(request), name, scope_of(request))


@router.post("/v1/aliases/{name}/promote", response_model=Alias, responses=_ERRORS)
async def promote(name: str, body: PromoteRequest, request: Request, _: AdminAuth) -> Alias:
    registry = _registry(request)
    registry.promote(name, body.adapter, actor="admin", reason=body.reason)
    audit.record(request, "alias.promote", name, adapter=body.adapter, reason=body.reason)
    return _alias(registry, name)


@router.post("/v1/aliases/{name}/rollback", response_model=Alias, responses=_ERRORS)
async def rollback(name: str, request: Request, _: AdminAuth,
                   body: RollbackRequest | None = None) -> Alias:
    registry = _registry(request)
    reason = (body or RollbackRequest()).reason
    registry.rollback(name, actor="admin", reason=reason)
    audit.record(request, "alias.rollback", name, reason=reason)
    return _alias(registry, name)


@router.delete("/v1/aliases/{name}", response_model=AliasDecision, responses=_ERRORS)
async def delete_alias(name: str, request: Request, _: AdminAuth) -> AliasDecision:
    decision = AliasDecision(**_registry(request).delete_alias(name, actor="admin").to_dict())
    audit.record(request, "alias.delete", name)
    return decision
