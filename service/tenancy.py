"""Who owns what: the caller's project and which projects' objects it may see.

Every key belongs to a project (``service.settings.KeysFile``); ``service.deps`` puts it
on ``request.state``. Files, jobs, batches and adapters record the project that made
them. A user key sees its own project's objects (and shared adapters); another
project's objects are answered 404 exactly as if they did not exist, so ids do not
leak. An admin key, and the single-tenant server without keys, see everything.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from service.errors import ModelNotFound

DEFAULT_PROJECT = "default"  # the owner of everything made without a project (and of old rows)


def project_of(request: Request) -> str:
    """The project new objects made by this request belong to."""
    return getattr(request.state, "project", DEFAULT_PROJECT)


def scope_of(request: Request) -> str | None:
    """The project whose objects this caller may see; None: every project (admin, or a
    server without keys). Call after the auth dependency has run."""
    return project_of(request) if getattr(request.state, "role", None) == "user" else None


def in_scope(owner: str | None, scope: str | None) -> bool:
    return scope is None or (owner or DEFAULT_PROJECT) == scope


def check_model(state: Any, model: str, scope: str | None) -> None:
    """404 for a served adapter (or alias) the caller's project may not use, with the same
    message as for a model that does not exist (so its id does not leak)."""
    if scope is None or model == state.base_id:
        return
    record = state.registry.resolve(model)
    if record is not None and not record.visible_to(scope):
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")


def project_eval_key(settings: Any, project: str) -> str | None:
    """The key a job's evaluation calls the server with: it must see the job's private
    adapter. Least privilege: a user key of the job's project, else an admin key; None on
    a server without keys."""
    own = [k for k in settings.user_api_keys
           if settings.key_projects.get(k, DEFAULT_PROJECT) == project]
    keys = [*own, *settings.admin_api_keys]
    return keys[0] if keys else None
