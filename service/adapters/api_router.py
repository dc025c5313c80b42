"""Adapter routes: ours (``/v1/adapters``) and vLLM's load/unload for drop-in use.
Changes (and publishing a project's adapter to every project) need an admin key; listing
needs a user key and shows that key's project's adapters plus the shared ones."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from service import audit
from service.adapters.protocol import (
    Adapter,
    AdapterList,
    DeletedAdapter,
    LoadLoRAAdapterRequest,
    RegisterAdapterRequest,
    UnloadLoRAAdapterRequest,
)
from service.adapters.serving import to_adapter
from service.deps import AdminAuth, UserAuth
from service.errors import BadRequest, ErrorResponse
from service.tenancy import scope_of

router = APIRouter(tags=["adapters"])
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404)}


def _serving(request: Request):
    return request.app.state.adapters_serving


@router.get("/v1/adapters", response_model=AdapterList)
async def list_adapters(request: Request, _: UserAuth) -> AdapterList:
    return _serving(request).list(scope_of(request))


@router.get("/v1/adapters/{name}", response_model=Adapter, responses=_ERRORS)
async def get_adapter(name: str, request: Request, _: UserAuth) -> Adapter:
    return _serving(request).get(name, scope_of(request))


@router.post("/v1/adapters", response_model=Adapter, status_code=201, responses=_ERRORS)
async def register_adapter(request: Request, _: AdminAuth) -> Adapter:
    """JSON ``{"name", "path"}`` for a server-side folder, or multipart form fields
    ``name`` + ``file`` (a .zip / .tar.gz of the adapter folder) for an upload."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        name, upload = form.get("name"), form.get("file")
        if not isinstance(name, str) or upload is None or isinstance(upload, str):
            raise BadRequest("multipart upload needs a `name` field and a `file` archive")
        adapter = await _serving(request).register_upload(name, upload.file)
        audit.record(request, "adapter.add", name, source="upload")
        return adapter
    try:
        body = RegisterAdapterRequest.model_validate(await request.json())
    except Exception as exc:  # invalid JSON or fields
        raise BadRequest(f'expected JSON {{"name": ..., "path": ...}}: {exc}') from None
    adapter = await _serving(request).register_path(body.name, body.path)
    audit.record(request, "adapter.add", body.name, source="path", path=body.path)
    return adapter


@router.post("/v1/adapters/{name}/publish", response_model=Adapter, responses=_ERRORS)
async def publish_adapter(name: str, request: Request, _: AdminAuth) -> Adapter:
    """Share a project's private adapter (a fine-tuning job's) with every project."""
    record = _serving(request).registry.publish(name)
    audit.record(request, "adapter.publish", name, owner=record.project)
    return to_adapter(record)


@router.delete("/v1/adapters/{name}", response_model=DeletedAdapter, responses=_ERRORS)
async def delete_adapter(name: str, request: Request, _: AdminAuth) -> DeletedAdapter:
    await _serving(request).delete(name)
    audit.record(request, "adapter.remove", name)
    return DeletedAdapter(name=name)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=_ERRORS)
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request, _: AdminAuth) -> str:
    """vLLM-compatible: same body and plain-text answer as vLLM's server."""
    await _serving(request).register_path(body.lora_name, body.lora_path, source="vllm-api")
    audit.record(request, "adapter.add", body.lora_name, source="vllm-api", path=body.lora_path)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=_ERRORS)
async def unload_lora_adapter(
    body: UnloadLoRAAdapterRequest, request: Request, _: AdminAuth
) -> str:
    await _serving(request).delete(body.lora_name)
    audit.record(request, "adapter.remove", body.lora_name, source="vllm-api")
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
