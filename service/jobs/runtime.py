"""Wire the jobs runtime into an app: store, Files service, Fine-tuning service, supervisor.

``jobs_lifespan`` is the lifespan of the fine-tuning router, so FastAPI runs it inside the
app's own lifespan (after the engine and adapter registry exist). It reads from
``app.state``:

- ``base_id`` / ``model_path``: the served base, the one fine-tunable model;
- ``registry`` (``AdapterRegistry``, created once the engine is up): finished adapters go
  through ``registry.add(name, path, source="fine_tuning")`` and are hot-loaded;
- optional overrides for tests and embedding: ``jobs_settings`` (JobsSettings),
  ``jobs_bases`` ({base id: checkpoint folder}), ``jobs_on_success`` (async callback).
"""

from __future__ import annotations

import asyncio
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
from service.jobs.verdict import JobEvaluator
from service.reports.schedule import app_reports_root, eval_api_key, local_server_url
from tuneserve.home import tuneserve_home

log = logging.getLogger(__name__)


def jobs_root() -> Path:
    """Where the jobs database, uploaded files and job runs live."""
    return tuneserve_home() / "jobs"


async def _registry(state: Any, timeout_s: float = 600.0) -> Any:
    """The adapter registry once the engine is up (``build_app`` starts it in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while getattr(state, "registry", None) is None or not getattr(state, "ready", True):
        if getattr(state, "engine_error", None):
            raise RuntimeError(f"the engine failed to start: {state.engine_error}")
        if loop.time() > deadline:
            raise RuntimeError("the engine did not become ready")
        await asyncio.sleep(0.5)
    return state.registry


@asynccontextmanager
async def jobs_lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: JobsSettings = getattr(state, "jobs_settings", None) or JobsSettings()
    bases: dict[str, Path] = getattr(state, "jobs_bases", None) or {}
    if not bases and getattr(state, "base_id", None):
        bases = {state.base_id: Path(state.model_path)}
    on_success = getattr(state, "jobs_on_success", None)
    serving_app = on_success is None  # the real server: adapters go to its registry
    if on_success is None:
        async def on_success(job: dict[str, Any], adapter: Path) -> None:
            registry = await _registry(state)
            await registry.add(job["fine_tuned_model"], adapter, source="fine_tuning")

    store = JobStore(jobs_root())
    files = FilesService(store, max_upload_bytes=int(settings.max_upload_mb * 1e6))
    evaluator: JobEvaluator | None = None
    if serving_app and settings.evaluate_on_success:
        evaluator = JobEvaluator(store, files, lambda: _registry(state),
                                 server_url=local_server_url(state.settings.host,
                                                             state.settings.port),
                                 api_key=eval_api_key(state.settings),
                                 reports_root=lambda: app_reports_root(state))
    supervisor = JobSupervisor(store, settings, on_success=on_success,
                               after_success=evaluator.submit if evaluator else None)
    state.jobs_store = store
    state.jobs_supervisor = supervisor
    state.files_service = files
    server_settings = getattr(state, "settings", None)
    state.fine_tuning = FineTuningService(
        store, supervisor, bases=bases,
        max_lora_rank=getattr(server_settings, "max_lora_rank", None),
    )
    demo: asyncio.Task | None = None
    if settings.enabled:
        if evaluator is not None:
            evaluator.start()
        await supervisor.start()
        if settings.demo_job_if_no_adapters:
            demo = asyncio.create_task(_demo_when_ready(state, settings))
    try:
        yield
    finally:
        if demo is not None:
            demo.cancel()
            await asyncio.gather(demo, return_exceptions=True)
        await supervisor.stop()
        if evaluator is not None:
            await evaluator.stop()


async def _demo_when_ready(state: Any, settings: JobsSettings) -> None:
    """Queue the demo job once the registry has restored its adapters (so 'no adapter yet'
    is known), off the event loop since it reads and validates the dataset."""
    try:
        registry = await _registry(state)
    except RuntimeError as exc:
        log.warning("demo job skipped: %s", exc)
        return
    job_id = await asyncio.to_thread(queue_demo_job, state.files_service, state.fine_tuning,
                                     settings, adapters=len(registry.list()))
    if job_id:
        log.info("queued the demo fine-tuning job %s (no adapter was registered yet); follow it "
                 "with GET /v1/fine_tuning/jobs/%s/events", job_id, job_id)
