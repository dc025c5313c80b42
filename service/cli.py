"""``tuneserve serve``: run the OpenAI-compatible server for one base model + adapters;
``tuneserve worker``: run only the fine-tuning job supervisor (service/jobs/worker.py).

Settings come from ``TUNESERVE_*`` environment variables; flags override them. API keys
are read only from the environment or ``--api-keys-file`` (never flags, which other users
can read in the process list).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path
from typing import Any

from tuneserve.errors import UserError

logger = logging.getLogger(__name__)

# flag -> Settings field (flags left unset keep the environment / default value)
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("base_model", str, "registered base model name or checkpoint folder"),
    "--served-model-name": ("served_model_name", str, "model id of the base (default: its name)"),
    "--host": ("host", str, "interface to bind (default 127.0.0.1)"),
    "--port": ("port", int, "TCP port (default 8000)"),
    "--adapters-dir": ("adapters_dir", Path, "folder scanned and watched for adapters"),
    "--api-keys-file": ("api_keys_file", Path, 'JSON {"user": [...], "admin": [...], '
                        '"metrics": [...]} or {"keys": [{"key", "project", "role"}]}'),
    "--max-lora-rank": ("max_lora_rank", int, "largest adapter rank served (default 16)"),
    "--max-loras": ("max_loras", int, "adapters per batch (default 4)"),
    "--max-cpu-loras": ("max_cpu_loras", int, "adapters kept loaded (default 16)"),
    "--max-model-len": ("max_model_len", int, "context length (default 2048)"),
    "--max-num-seqs": ("max_num_seqs", int, "engine batch size (default: vLLM's)"),
    "--kv-cache-space": ("kv_cache_space_gib", int, "KV cache GiB on CPU (default 2)"),
    "--max-in-flight": ("max_in_flight", int, "requests admitted at once (default 64)"),
    "--dtype": ("dtype", str, "weights dtype (default float32)"),
}


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a base model and its LoRA adapters over an OpenAI-compatible API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, (dest, kind, help_text) in _FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument(
        "--eval-schedule", dest="eval_schedules", action="append", default=None,
        metavar="'CRON|SUITE|MODELS'",
        help="run `tuneserve eval run SUITE --models MODELS` against this server on a cron "
        "(UTC), e.g. '0 3 * * *|docker-commands|base,docker-lora'; repeatable; replaces "
        "TUNESERVE_EVAL_SCHEDULES",
    )
    parser.set_defaults(func=run_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run only the fine-tuning job supervisor (no engine, no API), claiming jobs from "
        "the shared database",
        description="Train the jobs that serving replicas queue: claims jobs from "
        "TUNESERVE_DATABASE_URL (files and runs under TUNESERVE_SHARED_DIR) under a lease "
        "(TUNESERVE_JOBS_LEASE_S), publishes each trained adapter to the shared adapter store. "
        "Run the serving pods with TUNESERVE_JOBS_ENABLED=false. Stops on SIGTERM (a running "
        "job is re-queued to resume from its last checkpoint).",
    )
    worker.set_defaults(func=run_worker)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_settings(args: argparse.Namespace):
    """Settings from the environment, overridden by the flags that were given."""
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {dest: getattr(args, dest) for dest, *_ in _FLAGS.values()
                 if getattr(args, dest, None) is not None}
    if getattr(args, "eval_schedules", None):
        overrides["eval_schedules"] = args.eval_schedules
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise UserError(f"{where}: {first.get('msg')}") from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import build_app

    settings = build_settings(args)
    if not settings.auth_enabled:
        if not _is_loopback(settings.host):
            logger.warning("no API keys configured: binding to 127.0.0.1 instead of %s",
                           settings.host)
            settings.host = "127.0.0.1"
        logger.warning("no API keys configured: the API is open to local clients only; set "
                       "TUNESERVE_USER_API_KEYS / TUNESERVE_ADMIN_API_KEYS or --api-keys-file")
    app = build_app(settings, exit_on_engine_failure=True)
    logger.info("serving %s on http://%s:%d", app.state.base_id, settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)
    return 1 if app.state.engine_error else 0


def run_worker(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from service.jobs.settings import JobsSettings
    from service.jobs.worker import run_worker as supervise

    try:
        settings = JobsSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "TUNESERVE_JOBS_*"
        raise UserError(f"{where}: {first.get('msg')}") from None
    asyncio.run(supervise(settings))
    return 0
