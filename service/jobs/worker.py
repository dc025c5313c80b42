"""``tuneserve worker``: the job supervisor alone, no engine and no HTTP API.

It claims jobs from the shared jobs database (``TUNESERVE_DATABASE_URL``, payloads and runs
under ``TUNESERVE_SHARED_DIR``) exactly as a serving replica's supervisor does (leases,
takeover of a dead claimer's job, cancels recorded by any replica), so a deployment can
train on dedicated worker pods while its serving pods run with
``TUNESERVE_JOBS_ENABLED=false``.

A succeeded job's adapter is published without an engine:
``service.adapters.catalog.register_trained_adapter`` copies it into the shared adapter
store and inserts a private registry row; the serving replicas load it on their next sync.
The automatic evaluation (service/jobs/verdict.py) needs a server that serves the adapter:
the worker marks it pending, and a serving replica claims it and gives the verdict.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

from service.jobs.runtime import jobs_store
from service.jobs.settings import JobsSettings
from service.jobs.supervisor import JobSupervisor, OnSuccess
from service.jobs.verdict import mark_evaluation_pending

log = logging.getLogger(__name__)


async def publish_adapter(job: dict[str, Any], adapter: Path) -> None:
    """Publish a succeeded job's adapter for the serving replicas (private to its project)."""
    # Lazy: the catalog pulls in the adapter checks (and the registry's database) only once a
    # job succeeds.
    from service.adapters.catalog import register_trained_adapter

    await asyncio.to_thread(register_trained_adapter, job["fine_tuned_model"], adapter,
                            base_model=job["model"], project=job.get("project", "default"))


async def run_worker(settings: JobsSettings | None = None, *,
                     stop: asyncio.Event | None = None,
                     on_success: OnSuccess | None = None) -> None:
    """Supervise jobs until ``stop`` is set (SIGTERM / SIGINT when not given); a running job
    is stopped and re-queued to resume from its last checkpoint, as on a server shutdown."""
    settings = settings or JobsSettings()
    if not settings.enabled:
        log.warning("TUNESERVE_JOBS_ENABLED=false: this worker will take no job")
    store = await asyncio.to_thread(jobs_store)
    # The evaluation needs an engine serving the adapter: a serving replica claims it.
    after_success = (partial(mark_evaluation_pending, store) if settings.evaluate_on_success
                     else None)
    supervisor = JobSupervisor(store, settings, on_success=on_success or publish_adapter,
                               after_success=after_success)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.info("job worker %s: claiming jobs from %s (lease %ss)", supervisor.owner,
             _redacted(store.url), settings.lease_s)
    if settings.enabled:
        await supervisor.start()
    try:
        await stop.wait()
    finally:
        await supervisor.stop()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
