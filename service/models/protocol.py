"""Shapes of ``GET /v1/models`` (OpenAI's model list, plus vLLM's root/parent fields)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    # Adapter facts (rank, target modules, source, manifest) – absent for the base.
    adapter: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
