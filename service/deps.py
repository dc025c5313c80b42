"""FastAPI dependencies as ``Annotated`` aliases: the API-key checks.

``UserAuth`` admits a user or an admin key (inference); ``AdminAuth`` only an admin key
(adapter changes); ``MetricsAuth`` an admin or a scrape-only ``metrics`` key, which no
other route admits. Keys come as ``Authorization: Bearer KEY`` (what the OpenAI SDK sends)
and are compared in constant time; they are never logged. With no keys configured the
server is bound to localhost and both checks pass.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request

from service.audit import key_id
from service.errors import Forbidden, Unauthorized

Role = Literal["user", "admin", "metrics", "anonymous"]


def _matches(candidate: str, keys: list[str]) -> bool:
    # Compare against every key (no early exit) so timing does not reveal which matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def role_of(request: Request) -> Role:
    """The caller's role; raises 401 when a key is required but missing or unknown."""
    settings = request.app.state.settings
    if not settings.auth_enabled:
        return "anonymous"
    key = presented_key(request)
    if key is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if _matches(key, settings.admin_api_keys):
        role: Role = "admin"
    elif _matches(key, settings.user_api_keys):
        role = "user"
    elif _matches(key, settings.metrics_api_keys):
        role = "metrics"
    else:
        raise Unauthorized("invalid API key")
    # The key is known (matched in constant time above): its project is a plain lookup.
    request.state.project = settings.key_projects.get(key, "default")
    request.state.role = role
    request.state.key_id = key_id(key)  # what the audit log names, never the key
    return role


def require_user(request: Request) -> Role:
    role = role_of(request)
    if role == "metrics":
        raise Forbidden("a metrics API key may only read /metrics")
    return role


def require_admin(request: Request) -> Role:
    role = role_of(request)
    if role in ("user", "metrics"):
        raise Forbidden("this operation needs an admin API key")
    return role


def require_metrics(request: Request) -> Role:
    role = role_of(request)
    if role == "user":  # served model ids, private adapters included: not a project's to see
        raise Forbidden("/metrics needs an admin or a metrics API key")
    return role


def require_job_creator(request: Request) -> Role:
    role = require_user(request)
    if role == "user" and request.app.state.settings.job_creators == "admin":
        raise Forbidden("creating fine-tuning jobs needs an admin API key on this server "
                        "(TUNESERVE_JOB_CREATORS=admin)")
    return role


UserAuth = Annotated[Role, Depends(require_user)]
JobCreatorAuth = Annotated[Role, Depends(require_job_creator)]
AdminAuth = Annotated[Role, Depends(require_admin)]
MetricsAuth = Annotated[Role, Depends(require_metrics)]
