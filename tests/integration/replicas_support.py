"""Several ``tuneserve serve`` replicas on one database and one shared folder, as a
deployment runs them: each its own ``$TUNESERVE_HOME`` and port, all with the same
``TUNESERVE_DATABASE_URL`` and ``TUNESERVE_SHARED_DIR``. Generic: the adapter and the jobs
replica tests both start theirs through ``serve_replicas``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tests.integration.conftest import LiveServer, start_server, stop_server


@contextmanager
def serve_replicas(count: int, model_path: Path, model_id: str, workdir: Path, *,
                   database_url: str, shared_dir: Path, env: dict[str, str] | None = None,
                   extra: tuple[str, ...] = ()) -> Iterator[list[LiveServer]]:
    """Start ``count`` replicas (in parallel: their engines build at the same time), yield
    them once all are ready (``server.base_url`` each), stop them all after.

    ``env``: more environment for every replica; ``extra``: more ``serve`` flags. Adapter
    changes reach the other replicas within ``TUNESERVE_SYNC_INTERVAL_S`` (0.5 s here).
    """
    shared_dir.mkdir(parents=True, exist_ok=True)
    common = {"TUNESERVE_SYNC_INTERVAL_S": "0.5", **(env or {}),
              "TUNESERVE_DATABASE_URL": database_url, "TUNESERVE_SHARED_DIR": str(shared_dir)}
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(start_server, Path(model_path), model_id,
                               workdir / f"replica-{i}", *extra, env=common)
                   for i in range(count)]
    servers, failure = [], None
    for future in futures:
        try:
            servers.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - stop the others, then re-raise
            failure = failure or exc
    try:
        if failure is not None:
            raise failure
        yield servers
    finally:
        for server in servers:
            stop_server(server)
