"""Wire the jobs runtime into an app: store, Files service, Fine-tuning service, supervisor.

``jobs_lifespan`` is the lifespan of the fine-tuning router, so FastAPI runs it inside the
app's own lifespan (after the engine and adapter registry exist). It reads from
``app.state``:

- ``registry`` (``AdapterRegistry``): its base is the one fine-tunable model, finished
  adapters go through ``registry.add(name, path, source="fine_tuning")``;
- optional overrides for tests and embedding: ``jobs_settings`` (JobsSettings),
  ``jobs_bases`` ({base id: checkpoint folder}), ``jobs_on_success`` (async callback).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.files.serving import FilesService
from service.fine_tuning.serving import FineTuningService
from service.jobs.demo import queue_demo_job
from service.jobs.settings import JobsSettings
from service.jobs.store import JobStore
from service.jobs.supervisor import JobSupervisor
from tuneserve.home import tuneserve_home

log = logging.getLogger(__name__)


def jobs_root() -> Path:
    """Where the jobs database, uploaded files and job runs live."""
    return tuneserve_home() / "jobs"


@asynccontextmanager
async def jobs_lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: JobsSettings = getattr(state, "jobs_settings", None) or JobsSettings()
    registry = getattr(state, "registry", None)
    bases: dict[str, Path] = getattr(state, "jobs_bases", None) or (
        {registry.base.name: Path(registry.base.path)} if registry is not None else {}
    )
    on_success = getattr(state, "jobs_on_success", None)
    if on_success is None and registry is not None:
        async def on_success(job: dict[str, Any], adapter: Path) -> None:
            await registry.add(job["fine_tuned_model"], adapter, source="fine_tuning")

    store = JobStore(jobs_root())
    supervisor = JobSupervisor(store, settings, on_success=on_success)
    state.jobs_store = store
    state.jobs_supervisor = supervisor
    state.files_service = FilesService(store, max_upload_bytes=int(settings.max_upload_mb * 1e6))
    state.fine_tuning = FineTuningService(
        store, supervisor, bases=bases,
        max_lora_rank=getattr(registry, "max_lora_rank", None),
    )
    if settings.enabled:
        await supervisor.start()
        if settings.demo_job_if_no_adapters:
            adapters = registry.list() if registry is not None else []
            job_id = queue_demo_job(state.files_service, state.fine_tuning, settings,
                                    adapters=len(adapters))
            if job_id:
                log.info("queued the demo fine-tuning job %s (no adapter was registered)", job_id)
    try:
        yield
    finally:
        await supervisor.stop()
