"""``/health`` (process alive), ``/ready`` (engine ready) and ``/metrics`` (Prometheus; an
admin or metrics key when keys are configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.deps import MetricsAuth
from service.errors import ErrorResponse
from service.vllm_plugin import lora_ops_path

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive, and which multi-LoRA ops the engine runs (``tuneserve-grouped`` or ``vllm``)."""
    path, why = lora_ops_path()
    return {"status": "ok", "lora_ops": path, "lora_ops_reason": why}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    if getattr(state, "engine_error", None):
        return JSONResponse({"status": "failed", "reason": state.engine_error}, status_code=503)
    if not getattr(state, "ready", False):
        return JSONResponse({"status": "starting"}, status_code=503,
                            headers={"Retry-After": "5"})
    try:
        await state.engine.check_health()
    except Exception:
        return JSONResponse({"status": "engine unhealthy"}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.base_id,
                         "adapters": len(state.registry.list())})


@router.get("/metrics", responses={code: {"model": ErrorResponse} for code in (401, 403)})
async def metrics(_: MetricsAuth) -> Response:
    """Prometheus metrics: they name served model ids (private adapters included), so with
    keys configured only an admin or a scrape-only metrics key reads them."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
