"""Adapter management logic: register a server-side folder or an uploaded archive,
list, delete. All of it goes through the :class:`AdapterRegistry`."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from service.adapters.archive import extract_archive
from service.adapters.checks import check_name
from service.adapters.protocol import Adapter, AdapterList
from service.adapters.registry import AdapterRecord, AdapterRegistry
from service.errors import AdapterRejected
from service.tenancy import resolve_visible


def to_adapter(record: AdapterRecord) -> Adapter:
    return Adapter(**record.public())


class AdaptersServing:
    def __init__(self, registry: AdapterRegistry, max_upload_bytes: int):
        self.registry = registry
        self.max_upload_bytes = max_upload_bytes

    def list(self, scope: str | None = None) -> AdapterList:
        return AdapterList(data=[to_adapter(r) for r in self.registry.list(scope)])

    def get(self, name: str, scope: str | None = None) -> Adapter:
        """An adapter by name, or the adapter an alias points at (so an evaluation that
        names an alias finds the manifest of whatever it serves now); another project's
        private adapter is 404 as if absent."""
        record = resolve_visible(self.registry, name, scope)
        if record is None:
            from service.errors import NotFound

            raise NotFound(f"no adapter named {name!r} is served", param="name",
                           code="adapter_not_found")
        return to_adapter(record)

    async def register_path(self, name: str, path: str, source: str = "api") -> Adapter:
        return to_adapter(await self.registry.add(name, path, source=source))

    async def register_upload(self, name: str, upload: BinaryIO) -> Adapter:
        """Save the archive and extract it into the adapter store (every replica reads it;
        extract_archive stages in the store and renames, so the folder appears whole),
        then register it."""
        check_name(name, self.registry.base.name)
        if self.registry.get(name) is not None:
            raise AdapterRejected(f"an adapter named {name!r} is already served; delete it first",
                                  param="name", code="adapter_exists")
        store = self.registry.store
        dest = store.new_path(name)
        with tempfile.NamedTemporaryFile(dir=store.root, prefix=".archive-") as tmp:
            copied = await asyncio.to_thread(self._copy_bounded, upload, tmp)
            if copied > self.max_upload_bytes:
                raise AdapterRejected(f"upload is larger than {self.max_upload_bytes} bytes",
                                      code="archive_too_large")
            tmp.flush()
            await asyncio.to_thread(extract_archive, Path(tmp.name), dest,
                                    self.max_upload_bytes * 4)
        try:
            record = await self.registry.add(name, dest, source="upload", owned_path=True)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return to_adapter(record)

    def _copy_bounded(self, src: BinaryIO, dst: BinaryIO) -> int:
        total = 0
        while chunk := src.read(1 << 20):
            total += len(chunk)
            if total > self.max_upload_bytes:
                return total
            dst.write(chunk)
        return total

    async def delete(self, name: str) -> AdapterRecord:
        return await self.registry.remove(name)
