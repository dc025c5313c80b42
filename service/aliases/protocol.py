"""Shapes of ``/v1/aliases``: stable model ids that point at one served adapter."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AliasDecision(BaseModel):
    """One recorded decision about an alias, with who made it and the evidence."""

    object: Literal["alias.decision"] = "alias.decision"
    alias: str
    action: Literal["promote", "rollback", "refused", "delete"]
    adapter: str | None = None
    previous: str | None = None
    actor: str = Field(description="'admin' for an API call, 'job:<id>' for a job's gate.")
    reason: str
    evidence: dict[str, Any] | None = None
    created: int


class Alias(BaseModel):
    object: Literal["alias"] = "alias"
    name: str
    adapter: str | None = Field(
        description="The served adapter the alias points at now; null when no candidate has "
        "been promoted to it yet (its refusals are still listed).")
    decisions: list[AliasDecision] = Field(default_factory=list, description="Newest first.")


class AliasList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Alias]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(description="Served adapter the alias will point at.")
    reason: str = Field("manual promotion", max_length=500)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("manual rollback", max_length=500)
