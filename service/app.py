"""``build_app(settings)``: the FastAPI app that owns the engine and the adapter registry.

The engine starts in the background so ``/health`` answers at once and ``/ready`` turns
200 when the engine can serve; until then ``/v1/*`` answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from service.adapters.catalog import registry_sqlite
from service.adapters.checks import BaseModelShape
from service.adapters.registry import AdapterRegistry
from service.adapters.serving import AdaptersServing
from service.adapters.watcher import AdapterDirWatcher
from service.audit import AuditLog
from service.batches.runner import BatchRunner
from service.batches.serving import BatchesService, online_executor
from service.batches.store import BatchStore
from service.body_limits import INFERENCE_PATHS, MULTIPART_SLACK, BodyLimits
from service.chat.serving import ChatServing
from service.completions.serving import CompletionServing
from service.engine import Engine, RoutedEngine
from service.errors import (
    Unavailable,
    create_error_response,
    register_error_handlers,
)
from service.generation import Generator
from service.jobs.runtime import jobs_runtime
from service.models.serving import ModelsServing
from service.rate_limits import RateLimiter, RateLimitHeaders
from service.reports.runs import EvalRuns
from service.reports.schedule import scheduler_for_app
from service.responses.serving import ResponsesServing
from service.routers import ROUTERS
from service.settings import Settings
from tuneserve.database import database_url
from tuneserve.home import tuneserve_home

logger = logging.getLogger(__name__)
EngineFactory = Callable[[Settings, Path, str], Engine]


def served_model_id(settings: Settings, model_path: Path) -> str:
    """The base's model id: the flag, else the registry name, else the folder name."""
    if settings.served_model_name:
        return settings.served_model_name
    return settings.base_model if not Path(settings.base_model).is_dir() else model_path.name


def _default_engine_factory(settings: Settings, model_path: Path, base_id: str) -> Engine:
    from service.engine import VllmEngine

    return VllmEngine.start(settings, model_path, base_id)


async def _start_serving(app: FastAPI, factory: EngineFactory,
                         registry_ready: asyncio.Future[AdapterRegistry]) -> None:
    """Start the engine and the registry; ``registry_ready`` gets the registry (or the
    engine's failure) for the jobs runtime."""
    state = app.state
    settings: Settings = state.settings
    try:
        # The engine build blocks for about a minute: keep the event loop answering /health.
        engine = await asyncio.to_thread(factory, settings, state.model_path, state.base_id)
        # Adapters vLLM cannot serve go to the transformers+PEFT engine (started on first use).
        engine = RoutedEngine(engine)
    except Exception as exc:
        logger.exception("engine failed to start")
        state.engine_error = f"{exc.__class__.__name__}: {exc}"
        registry_ready.set_exception(RuntimeError(f"the engine failed to start: "
                                                  f"{state.engine_error}"))
        if state.exit_on_engine_failure:
            os.kill(os.getpid(), signal.SIGINT)  # let uvicorn shut down; the CLI exits 1
        return
    base = BaseModelShape.from_checkpoint(state.base_id, state.model_path)
    # TUNESERVE_DATABASE_URL set: the one catalog every replica serves from; else the
    # per-base file under $TUNESERVE_HOME.
    db_path = registry_sqlite(state.base_id)
    registry = AdapterRegistry(db_path, engine, base, settings.max_lora_rank,
                               url=database_url(db_path))
    generator = Generator(engine, registry, state.base_id, settings.max_in_flight)
    state.engine = engine
    state.registry = registry
    state.generator = generator
    state.chat_serving = ChatServing(generator, engine.tokenizer)
    state.completion_serving = CompletionServing(generator, engine.tokenizer)
    state.responses_serving = ResponsesServing(state.chat_serving)
    state.models_serving = ModelsServing(state.base_id, str(state.model_path),
                                         engine.max_model_len, registry, int(time.time()))
    state.adapters_serving = AdaptersServing(registry, settings.max_upload_mb * 1024 * 1024)
    await asyncio.to_thread(registry.store.sweep)  # what a crashed publish left behind
    failed = await registry.restore()
    for name, reason in failed:
        logger.warning("previously served adapter %s not served: %s", name, reason)
    # Other replicas' adds, removals, publications and alias moves (and a worker's adapters).
    state.registry_sync = asyncio.create_task(registry.run_sync(settings.sync_interval_s))
    if settings.adapters_dir is not None:
        state.watcher = AdapterDirWatcher(registry, settings.adapters_dir, settings.watch_interval_s)
        await state.watcher.scan()
        state.watcher.start()
    state.ready = True
    state.batch_runner.execute = online_executor(state)
    state.batch_runner.start()  # resumes a batch a previous run left unfinished
    registry_ready.set_result(registry)
    logger.info("ready: serving %s with %d adapter(s)", state.base_id, len(registry.list()))


def _add_batches(state: Any, settings: Settings) -> None:
    """The Batch API's store and runner; the runner starts once the engine serves."""
    # The configured database (TUNESERVE_DATABASE_URL, else the per-pod SQLite file): its
    # input and output files are in the shared jobs store, and every replica's runner claims
    # requests, so the replicas share each batch's work exactly once.
    store = BatchStore()
    # The FilesService comes from the jobs runtime (the fine-tuning router's lifespan).
    runner = BatchRunner(store, lambda: state.files_service, execute=None,
                         concurrency=settings.batch_concurrency)
    state.batch_runner = runner
    state.batches = BatchesService(store, runner)


def build_app(
    settings: Settings,
    engine_factory: EngineFactory | None = None,
    *,
    exit_on_engine_failure: bool = False,
) -> FastAPI:
    """The app for ``settings``. ``engine_factory(settings, model_path, base_id)`` builds
    the engine (default: vLLM); tests pass a fake to exercise HTTP paths quickly."""
    from training.base_models import resolve_model_path

    model_path = resolve_model_path(settings.base_model)
    factory = engine_factory or _default_engine_factory
    starting: dict[str, asyncio.Task] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        registry_ready: asyncio.Future[AdapterRegistry] = asyncio.get_running_loop().create_future()
        # Retrieved here so an engine failure nobody awaited is not logged a second time.
        registry_ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        starting["task"] = asyncio.create_task(_start_serving(app, factory, registry_ready))
        # Scheduled evaluations run as subprocesses calling this server over HTTP; a fire
        # before the engine is ready is skipped.
        app.state.eval_scheduler.start()
        try:
            # Jobs train in subprocesses and start at once; a finished adapter awaits the
            # registry (shielded: a cancelled waiter must not cancel the future for others).
            async with jobs_runtime(app.state, registry=lambda: asyncio.shield(registry_ready)):
                yield
        finally:
            starting["task"].cancel()
            await asyncio.gather(starting["task"], return_exceptions=True)
            registry_ready.cancel()
            await app.state.eval_scheduler.stop()  # kills a running evaluation
            await app.state.eval_runs.stop()  # and the API's (POST /v1/evaluations)
            await app.state.batch_runner.stop()
            if getattr(app.state, "watcher", None) is not None:
                await app.state.watcher.stop()
            if getattr(app.state, "registry_sync", None) is not None:
                app.state.registry_sync.cancel()
                await asyncio.gather(app.state.registry_sync, return_exceptions=True)
            if getattr(app.state, "engine", None) is not None:
                app.state.engine.shutdown()
            if getattr(app.state, "registry", None) is not None:
                app.state.registry.close()

    app = FastAPI(title="tuneserve", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.model_path = model_path
    app.state.base_id = served_model_id(settings, model_path)
    app.state.ready = False
    app.state.engine_error = None
    app.state.exit_on_engine_failure = exit_on_engine_failure
    app.state.watcher = None
    app.state.registry_sync = None
    app.state.eval_scheduler = scheduler_for_app(app.state)
    app.state.eval_runs = EvalRuns(app.state)
    _add_batches(app.state, settings)
    app.state.audit = AuditLog(tuneserve_home() / "audit" / "audit.jsonl")
    register_error_handlers(app)

    @app.middleware("http")
    async def _until_ready(request: Request, call_next):
        # OpenAI routes need the engine; answer 503 (not a crash) while it starts.
        if request.url.path.startswith("/v1/") and not app.state.ready:
            reason = app.state.engine_error or "the engine is starting"
            return create_error_response(
                Unavailable(f"{reason}; retry shortly", headers={"Retry-After": "5"})
            )
        return await call_next(request)

    # Prompts are tokenized on the event loop: a multi-megabyte body would stall every
    # stream for seconds, so inference bodies are bounded before they are read (a prompt
    # past the context is refused anyway; 64 bytes per token of context is generous).
    # Uploads are bounded while they stream, never spooled past their cap.
    inference_cap = max(1 << 20, settings.max_model_len * 64)
    adapter_cap = settings.max_upload_mb * 1024 * 1024 + MULTIPART_SLACK

    def body_cap(path: str) -> tuple[int, bool] | None:
        if path in INFERENCE_PATHS:
            return inference_cap, True
        if path == "/v1/adapters":
            return adapter_cap, False
        if path == "/v1/files" and getattr(app.state, "files_service", None) is not None:
            return app.state.files_service.max_upload_bytes + MULTIPART_SLACK, False
        return None

    app.add_middleware(BodyLimits, cap_for=body_cap)
    app.state.rate_limiter = RateLimiter(settings.limits_for)
    app.add_middleware(RateLimitHeaders)

    for module_name in ROUTERS:
        module = importlib.import_module(module_name)
        if hasattr(module, "router"):
            app.include_router(module.router)
        elif hasattr(module, "mount"):
            module.mount(app)
        else:
            raise RuntimeError(f"{module_name} has neither `router` nor `mount(app)`")
    return app


__all__ = ["build_app", "served_model_id"]
