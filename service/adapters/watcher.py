"""Watch an adapters folder: every complete adapter folder in it gets served.

A folder is complete when it holds ``adapter_config.json`` and
``adapter_model.safetensors`` (the training side writes adapters atomically by renaming a
finished temp folder, so completeness is all we need to look for). Hidden folders are
skipped. A folder that is rejected is not retried until it changes; an adapter the
watcher added is unloaded when its folder disappears.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.adapters.checks import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from service.adapters.registry import AdapterRegistry
from service.errors import ServiceError

logger = logging.getLogger(__name__)
SOURCE = "adapters-dir"


class AdapterDirWatcher:
    def __init__(self, registry: AdapterRegistry, folder: Path, interval_s: float) -> None:
        self.registry = registry
        self.folder = Path(folder)
        self.interval_s = interval_s
        # path -> config mtime of folders that failed, so they are retried only on change
        self.rejected: dict[Path, tuple[float, str]] = {}
        self._task: asyncio.Task | None = None

    @staticmethod
    def _stamp(folder: Path) -> float:
        return max((folder / ADAPTER_CONFIG).stat().st_mtime,
                   (folder / ADAPTER_WEIGHTS).stat().st_mtime)

    async def scan(self) -> None:
        """One pass: add new complete folders, drop adapters whose folder vanished."""
        self.folder.mkdir(parents=True, exist_ok=True)
        present: set[str] = set()
        # Rows another replica's watcher (same shared folder) already added: its sync loads them.
        cataloged = await asyncio.to_thread(self.registry.catalog.rows)
        for child in sorted(self.folder.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if not ((child / ADAPTER_CONFIG).is_file() and (child / ADAPTER_WEIGHTS).is_file()):
                continue
            present.add(child.name)
            if self.registry.get(child.name) is not None or child.name in cataloged:
                continue
            try:
                stamp = self._stamp(child)
            except OSError:
                continue
            if self.rejected.get(child, (None,))[0] == stamp:
                continue
            try:
                await self.registry.add(child.name, child, source=SOURCE)
                self.rejected.pop(child, None)
            except ServiceError as exc:
                logger.warning("adapter folder %s not served: %s", child, exc.message)
                self.rejected[child] = (stamp, exc.message)
        for record in self.registry.list():
            if record.source == SOURCE and record.name not in present \
                    and not Path(record.path).exists():
                logger.info("adapter folder %s is gone; unloading %s", record.path, record.name)
                try:
                    await self.registry.remove(record.name)
                except ServiceError as exc:  # an alias still serves it: keep it loaded
                    logger.warning("adapter %s stays served: %s", record.name, exc.message)

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:  # keep watching whatever one pass hit
                logger.exception("adapters folder scan failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
