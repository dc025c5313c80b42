"""Shapes of the adapter endpoints (ours and vLLM's load/unload for drop-in use)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class RegisterAdapterRequest(BaseModel):
    """``POST /v1/adapters`` with JSON: serve the adapter folder at a server-side ``path``."""

    name: str = Field(description="Model id clients will use for the adapter.")
    path: str = Field(description="Adapter folder on the server.")


class Adapter(BaseModel):
    object: Literal["adapter"] = "adapter"
    name: str
    path: str
    base_model: str
    rank: int
    alpha: float | None = None
    target_modules: list[str]
    source: str
    created: int
    manifest: dict[str, Any] | None = None
    project: str = Field("default", description="The project that owns it.")
    shared: bool = Field(True, description="Every project may use it (added by an admin, "
                         "published or promoted); else only its project.")
    method: str = Field("lora", description="How it was trained: lora, dora, ia3, vera, "
                        "prompt_tuning, prefix_tuning, adalora, ...")
    engine: Literal["vllm", "peft"] = Field(
        "vllm", description="What serves it: vLLM (LoRA) or the transformers+PEFT engine.")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Adapter]


class DeletedAdapter(BaseModel):
    object: Literal["adapter"] = "adapter"
    name: str
    deleted: bool = True


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's ``/v1/load_lora_adapter`` body."""

    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's ``/v1/unload_lora_adapter`` body."""

    lora_name: str
    lora_int_id: int | None = None
