"""The jobs runtime: store, Files service, Fine-tuning service, supervisor and evaluator.

``build_app`` enters ``jobs_runtime`` in its own lifespan and hands it ``registry``: an
awaitable factory that gives the adapter registry once the engine is up (it fails if the
engine cannot start). Finished adapters go through
``registry.add(name, path, source="fine_tuning")`` and are hot-loaded, private to the
job's project. The runtime puts
``jobs_store``, ``jobs_supervisor``, ``files_service`` and ``fine_tuning`` on the app state
for the routers. Tests and embedders pass ``on_success`` instead of a registry.

The store is ``jobs_store()``: the ``TUNESERVE_DATABASE_URL`` database (else the SQLite file
``$TUNESERVE_HOME/jobs/jobs.sqlite``) with payloads and runs under ``shared_dir()/jobs``, so
with a shared database every replica lists
the same files and jobs and any replica's supervisor (or ``tuneserve worker``,
service/jobs/worker.py) can run any job. With ``TUNESERVE_JOBS_ENABLED=false`` the runtime
serves the APIs but never trains (a worker Deployment does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from service.files.serving import FilesService
from service.fine_tuning.serving import FineTuningService
from service.jobs.demo import queue_demo_job
from service.jobs.settings import JobsSettings
from service.jobs.store import JobStore
from service.jobs.supervisor import JobSupervisor, OnSuccess
from service.jobs.verdict import JobEvaluator
from service.reports.eval_subprocess import app_reports_root, local_server_url
from service.tenancy import job_alias_scope, project_eval_key
from tuneserve.database import database_url
from tuneserve.home import shared_dir, tuneserve_home

log = logging.getLogger(__name__)


def jobs_root() -> Path:
    """Where uploaded files and job runs live: ``jobs/`` in the folder all replicas mount."""
    return shared_dir() / "jobs"


def jobs_store() -> JobStore:
    """The jobs store every replica and worker of this deployment shares: the
    ``TUNESERVE_DATABASE_URL`` database, else this process's SQLite file
    ``$TUNESERVE_HOME/jobs/jobs.sqlite`` (never on the shared volume: SQLite's locks do not
    hold on a network file system)."""
    default = tuneserve_home() / "jobs" / "jobs.sqlite"
    return JobStore(jobs_root(), url=database_url(default_sqlite=default))


RegistryGetter = Callable[[], Awaitable[Any]]


@asynccontextmanager
async def jobs_runtime(state: Any, *, registry: RegistryGetter | None = None,
                       settings: JobsSettings | None = None,
                       bases: dict[str, Path] | None = None,
                       on_success: OnSuccess | None = None) -> AsyncIterator[None]:
    """Run the jobs runtime for the app whose ``state`` is given, for the ``with`` block.

    ``bases`` defaults to the served base (``state.base_id`` at ``state.model_path``);
    ``on_success`` defaults to adding the adapter to the awaited ``registry``, and the
    automatic evaluation runs only then (it needs the served adapter).
    """
    settings = settings or JobsSettings()
    if bases is None:
        bases = {state.base_id: Path(state.model_path)}
    serving = on_success is None  # adapters go to the served registry (not a test's callback)
    if on_success is None:
        if registry is None:
            raise ValueError("jobs_runtime needs a registry or an on_success callback")
        get_registry = registry

        async def on_success(job: dict[str, Any], adapter: Path) -> None:
            # Private to the job's project until an admin publishes or promotes it; a copy
            # in the shared adapter store, so every replica can load it.
            await (await get_registry()).add(job["fine_tuned_model"], adapter,
                                             source="fine_tuning",
                                             project=job.get("project", "default"),
                                             shared=False, publish=True)

    store = jobs_store()
    files = FilesService(store, max_upload_bytes=int(settings.max_upload_mb * 1e6))
    evaluator: JobEvaluator | None = None
    if serving:  # claims what any replica or worker marked pending (evaluate_on_success)
        evaluator = JobEvaluator(store, files, registry,
                                 server_url=local_server_url(state.settings.host,
                                                             state.settings.port),
                                 api_key=lambda project: project_eval_key(state.settings,
                                                                          project),
                                 reports_root=lambda: app_reports_root(state),
                                 alias_scope=lambda project: job_alias_scope(state.settings,
                                                                             project),
                                 lease_s=settings.lease_s, replica=settings.replica_id)
    supervisor = JobSupervisor(store, settings, on_success=on_success,
                               after_success=(evaluator.submit if evaluator and
                                              settings.evaluate_on_success else None))
    state.jobs_store = store
    state.jobs_supervisor = supervisor
    state.files_service = files
    server_settings = getattr(state, "settings", None)
    state.fine_tuning = FineTuningService(
        store, supervisor, bases=bases,
        max_lora_rank=getattr(server_settings, "max_lora_rank", None),
        max_processes=settings.max_processes,
    )
    demo: asyncio.Task | None = None
    if evaluator is not None:  # also with training off: it evaluates what worker pods trained
        evaluator.start()
    if settings.enabled:
        await supervisor.start()
        if settings.demo_job_if_no_adapters and registry is not None:
            demo = asyncio.create_task(_demo_when_ready(state, settings, registry))
    try:
        yield
    finally:
        if demo is not None:
            demo.cancel()
            await asyncio.gather(demo, return_exceptions=True)
        await supervisor.stop()
        if evaluator is not None:
            await evaluator.stop()


async def _demo_when_ready(state: Any, settings: JobsSettings, registry: RegistryGetter) -> None:
    """Queue the demo job once the registry has restored its adapters (so 'no adapter yet'
    is known), off the event loop since it reads and validates the dataset."""
    try:
        adapters = len((await registry()).list())
    except RuntimeError as exc:
        log.warning("demo job skipped: %s", exc)
        return
    job_id = await asyncio.to_thread(queue_demo_job, state.files_service, state.fine_tuning,
                                     settings, adapters=adapters)
    if job_id:
        log.info("queued the demo fine-tuning job %s (no adapter was registered yet); follow it "
                 "with GET /v1/fine_tuning/jobs/%s/events", job_id, job_id)
