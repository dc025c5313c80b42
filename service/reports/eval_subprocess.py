"""What one scheduled (or post-training) evaluation runs: ``python -m tuneserve.cli eval run
SUITE --models MODELS --server <this server>/v1 --output-dir <reports folder>`` as a
subprocess in its own process group. An evaluation never blocks the event loop nor shares
the engine's process state: it calls this server over HTTP like any client. The API key
goes to the child in ``TUNESERVE_API_KEY``, never in argv (which ``ps`` shows to every
user); cancelling kills the child's process group.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.process_group import stop_group
from service.reports.schedule_config import EvalSchedule


def local_server_url(host: str, port: int) -> str:
    """This server's ``/v1`` URL as seen from the same machine."""
    # A wildcard bind address is not an address to connect to; the loopback reaches it.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


def eval_command(entry: EvalSchedule, server_url: str, output_dir: Path) -> list[str]:
    """argv of one scheduled run (the ``tuneserve`` console script's module, this Python)."""
    return [
        sys.executable,
        "-m",
        "tuneserve.cli",
        "eval",
        "run",
        entry.suite,
        "--models",
        entry.models,
        "--server",
        server_url,
        "--output-dir",
        str(output_dir),
    ]


def app_reports_root(state: Any) -> Path:
    """Where in-service evaluations write reports: the folder ``/reports`` serves."""
    from tuneserve.home import reports_dir

    serving = getattr(state, "reports_serving", None)
    return serving.root if serving is not None else reports_dir()


def eval_env(api_key: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours plus the key, which ``eval run`` reads by default."""
    env = dict(os.environ if base is None else base)
    if api_key:
        env["TUNESERVE_API_KEY"] = api_key
    return env


async def run_subprocess(
    argv: list[str], env: dict[str, str], log_path: Path, kill_grace_s: float = 3.0
) -> int:
    """Run ``argv`` with its output appended to ``log_path``; its exit code. Cancelling
    sends SIGTERM to its process group, SIGKILL after ``kill_grace_s``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(
            f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} "
            f"{' '.join(argv[1:])}\n".encode()
        )
        out.flush()
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # own process group: a cancel reaches all of it
        )
    try:
        return await process.wait()
    except asyncio.CancelledError:
        await stop_group(process, kill_grace_s)
        raise
