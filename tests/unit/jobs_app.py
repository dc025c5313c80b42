"""A plain FastAPI app with only the Files and Fine-tuning routers (and the shared error
handlers), its supervisor running the contract-#1 fake trainer. For the unit tests."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI

from service.audit import AuditLog
from service.errors import register_error_handlers
from service.files.api_router import router as files_router
from service.fine_tuning.api_router import router as fine_tuning_router
from service.jobs.runtime import jobs_runtime
from service.jobs.settings import JobsSettings
from tuneserve.home import tuneserve_home

FAKE_TRAINER = Path(__file__).with_name("jobs_fake_trainer.py")
BASE_ID = "tiny-base"


def build_jobs_app(base_path: Path, *, on_success=None, registry=None,
                   **settings: Any) -> FastAPI:
    """``registry``: what the runtime's registry getter gives (the demo job reads it)."""
    settings.setdefault("train_command", [sys.executable, str(FAKE_TRAINER)])
    jobs_settings = JobsSettings(poll_interval_s=0.05, cancel_grace_s=3.0, **settings)

    async def record(job: dict, adapter: Path) -> None:
        app.state.loaded.append((job["fine_tuned_model"], adapter))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def get_registry():
            return registry

        async with jobs_runtime(app.state, settings=jobs_settings, bases={BASE_ID: base_path},
                                on_success=on_success or record,
                                registry=get_registry if registry is not None else None):
            yield

    app = FastAPI(lifespan=lifespan)
    register_error_handlers(app)
    app.include_router(files_router)
    app.include_router(fine_tuning_router)
    app.state.settings = SimpleNamespace(auth_enabled=False, max_lora_rank=16,
                                         job_creators="user", key_projects={})
    app.state.audit = AuditLog(tuneserve_home() / "audit" / "audit.jsonl")
    app.state.loaded = []
    return app


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "list containers"},
                  {"role": "assistant", "content": "docker ps"}]},
    {"messages": [{"role": "user", "content": "list images"},
                  {"role": "assistant", "content": "docker images"}]},
]
