"""Several ``tuneserve serve`` replicas of one deployment on this machine: one database
(``TUNESERVE_DATABASE_URL``), one shared folder (``TUNESERVE_SHARED_DIR``), a home folder
and a port each (two pods)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs_server import JobsServer

# The training command the replicas' supervisors run: it guards against two workers on one
# job (tests/integration/replicas_trainer.py) and runs the real trainer or the fake one.
REPLICAS_TRAINER = Path(__file__).with_name("replicas_trainer.py")


def replica_train_command() -> list[str]:
    return [sys.executable, str(REPLICAS_TRAINER)]


@contextmanager
def start_replicas(n: int, *, model: Path, database_url: str, shared_dir: Path, root: Path,
                   env: dict[str, str] | None = None,
                   timeout: float = 300.0) -> Iterator[list[JobsServer]]:
    """Start ``n`` serve processes at once against ``database_url`` and ``shared_dir`` (homes
    under ``root``), wait until all serve, yield them (``.base_url``); stop them after."""
    common = {"TUNESERVE_DATABASE_URL": database_url, "TUNESERVE_SHARED_DIR": str(shared_dir),
              **(env or {})}
    servers = [JobsServer(model=model, home=root / f"replica-{i + 1}", env=dict(common))
               for i in range(n)]
    try:
        for server in servers:
            server.home.mkdir(parents=True, exist_ok=True)
            server.launch()
        for server in servers:
            server.wait_ready(timeout)
        yield servers
    finally:
        for server in servers:
            server.stop()


def copy_logs(servers: list[JobsServer], into: Path) -> None:
    """Keep the replicas' server logs next to a test's report."""
    for server in servers:
        for log in server.home.glob("serve-*.log"):
            shutil.copy(log, into / f"{server.home.name}-{log.name}")
