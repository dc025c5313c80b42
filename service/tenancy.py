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


def alias_visible(registry: Any, alias: str, scope: str | None) -> bool:
    """An alias is its owning project's (404 to others) or shared (owner None: an admin's)."""
    owner = registry.aliases.owner(alias)
    return owner is None or in_scope(owner, scope)


def resolve_visible(registry: Any, name: str, scope: str | None) -> Any:
    """The served adapter ``name`` means to ``scope`` (itself or an alias's target), or None
    when it is absent or not the caller's to use: the alias must be visible and the
    adapter too."""
    if registry.aliases.target(name) is not None and not alias_visible(registry, name, scope):
        return None
    record = registry.resolve(name)
    return record if record is not None and record.visible_to(scope) else None


def check_model(state: Any, model: str, scope: str | None) -> None:
    """404 for a served adapter (or alias) the caller's project may not use, with the same
    message as for a model that does not exist (so its id does not leak)."""
    if scope is None or model == state.base_id:
        return
    if state.registry.resolve(model) is not None and \
            resolve_visible(state.registry, model, scope) is None:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")


def report_visible(state: Any, model_ids: list[str], scope: str | None) -> bool:
    """A report is shown to ``scope`` only when every model it names is one the project may
    use now (the base, its own or shared adapters and aliases). A model the server no longer
    serves has no known owner, so its reports are admins' only; so is a report that names
    no model (an unreadable record)."""
    if scope is None:
        return True
    registry = getattr(state, "registry", None)
    return bool(model_ids) and all(
        model == getattr(state, "base_id", None)
        or (registry is not None and resolve_visible(registry, model, scope) is not None)
        for model in model_ids)


def job_alias_scope(settings: Any, project: str) -> str | None:
    """Whose aliases a job's automatic promotion may create or move: any (None) where a job
    is an admin decision (``TUNESERVE_JOB_CREATORS=admin``, or a server without keys);
    else only its own project's, so project B's passing job cannot move what A calls."""
    if not settings.auth_enabled or settings.job_creators == "admin":
        return None
    return project


def alias_refusal(alias: str, exists: bool, owner: str | None, scope: str | None) -> str | None:
    """Why a promotion acting for ``scope`` (None: admin) may not move ``alias`` (owned by
    ``owner``; None: shared), or None when it may. A new alias may always be created: it
    becomes ``scope``'s."""
    if scope is None or not exists or (owner is not None and in_scope(owner, scope)):
        return None
    whose = "is shared (an admin made it)" if owner is None else "belongs to another project"
    return (f"alias {alias!r} {whose}; a job of project {scope!r} may only create or move "
            "its own project's aliases (an admin may promote it: POST /v1/aliases/"
            f"{alias}/promote)")


def project_eval_key(settings: Any, project: str) -> str | None:
    """The key a job's evaluation calls the server with: it must see the job's private
    adapter. Least privilege: a user key of the job's project, else an admin key; None on
    a server without keys."""
    own = [k for k in settings.user_api_keys
           if settings.key_projects.get(k, DEFAULT_PROJECT) == project]
    keys = [*own, *settings.admin_api_keys]
    return keys[0] if keys else None


def schedule_eval_key(settings: Any, project: str | None) -> str | None:
    """The key a scheduled evaluation runs with: its project's (``project_eval_key``), or an
    admin key for an entry without a project; None on a server without keys. ValueError,
    at startup, when there is no such key."""
    if not settings.auth_enabled:
        return None
    key = (project_eval_key(settings, project) if project is not None
           else next(iter(settings.admin_api_keys), None))
    if key is None:
        raise ValueError(
            f"an eval schedule {'for project ' + repr(project) if project else 'without a project'}"
            " needs " + (f"a user key of project {project!r} or an admin key" if project else
                         "an admin key; or name the project it runs for (its key is used)"))
    return key
