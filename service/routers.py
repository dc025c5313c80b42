"""The one list of API pieces ``build_app`` includes, in order.

Each entry is a module path. The module exposes ``router`` (a FastAPI ``APIRouter``) or
``mount(app)`` (e.g. a Gradio UI mount). To add a resource, add one line here.
"""

from __future__ import annotations

ROUTERS: list[str] = [
    "service.health.api_router",
    "service.models.api_router",
    "service.chat.api_router",
    "service.completions.api_router",
    "service.responses.api_router",  # /v1/responses: a minimal Responses API over chat
    "service.adapters.api_router",
    "service.aliases.api_router",  # stable names for adapters: promote, roll back
    "service.files.api_router",
    "service.fine_tuning.api_router",
    "service.batches.api_router",  # /v1/batches: request files run behind online traffic  # its lifespan runs the fine-tuning job supervisor
    "service.reports.api_router",
    "service.audit.api_router",  # GET /v1/audit: who changed what is served (admin)  # evaluation reports under $TUNESERVE_HOME/reports
    "ui.mount",  # the Gradio UI at /ui (mount(app)); TUNESERVE_UI=0 leaves it out
]
