"""The adapter registry: what this replica serves, kept in step with the catalog.

The truth is the catalog (catalog.py): adapter rows and aliases on the storage layer, per
base model, and the adapter folders they name. ``TUNESERVE_DATABASE_URL`` set, every
replica reads and writes the one database; unset, the registry keeps the per-base SQLite
file ``$TUNESERVE_HOME/registry/<base>.sqlite`` it always used (adopted in place by
migration 0004), so a restarted server reloads what it served. Everything that adds an
adapter on this replica (folder watch, upload, API call, finished fine-tuning job) goes
through :meth:`AdapterRegistry.add`: load into the engine, then insert the row.

Each replica holds its own loaded set (``_served``: record + engine handle) and the aliases
in memory, so routing a request never queries the database. :meth:`AdapterRegistry.sync`,
run every ``sync_interval_s`` (``run_sync``), reconciles them with the catalog: it loads
rows other replicas (or a ``tuneserve worker``) added, unloads rows they removed, takes
their ``shared`` flags and their alias moves. A change on one replica serves on the others
within one interval.

Each adapter has an owning project and a ``shared`` flag. What an admin adds (API, upload,
watched folder) is shared: every project may use it. A fine-tuning job's adapter is
private to the job's project until an admin publishes it or promotes it to an alias;
``scope`` arguments (a project, or None for admin) filter what a caller sees.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from service import metrics
from service.adapters.aliases import AliasTable, Decision
from service.adapters.catalog import (
    AdapterCatalog,
    AdapterRecord,
    AdapterStore,
    adapter_store_dir,
)
from service.adapters.checks import BaseModelShape, check_adapter, check_name
from service.engine import AdapterHandle, Engine
from service.errors import AdapterRejected, BadRequest, Conflict, NotFound
from service.settings import Settings
from service.tenancy import DEFAULT_PROJECT
from tuneserve.database import sqlite_url

__all__ = ["AdapterRecord", "AdapterRegistry"]

logger = logging.getLogger(__name__)
# A removed adapter's folder outlives its row by this many sync intervals when the catalog
# is shared: other replicas serve it until their next sync, and vLLM re-reads an adapter's
# folder whenever it loads it into a LoRA slot again (a missing folder kills that engine).
REMOVED_FOLDER_SYNCS = 5


class AdapterRegistry:
    """Checks, loads and lists adapters for one engine and base model; the catalog in the
    database says what every replica serves."""

    def __init__(self, db_path: Path, engine: Engine, base: BaseModelShape, max_lora_rank: int,
                 *, url: str | None = None, store: AdapterStore | None = None):
        """``db_path``: the per-base SQLite file, used when ``url`` (a shared database) is
        None or names that file. ``store``: where uploads and published jobs' adapters go (default: the shared
        adapter store of ``base``)."""
        self.db_path = Path(db_path)
        self.engine = engine
        self.base = base
        self.max_lora_rank = max_lora_rank
        url = url or sqlite_url(self.db_path)
        # Per-pod file: no other replica serves its rows, so a row that no longer loads is
        # dropped on restore and a removed adapter's folder goes at once. In a shared
        # database another replica may still serve either: kept (for a grace, the folder).
        self._per_pod = url == sqlite_url(self.db_path)
        # Seconds a removed adapter's folder is kept (0 on the per-pod file: nobody else
        # serves it); run_sync ties it to the actual interval.
        self.folder_grace_s = (0.0 if self._per_pod
                               else REMOVED_FOLDER_SYNCS
                               * Settings.model_fields["sync_interval_s"].default)
        self._discards: set[asyncio.Task] = set()
        self.catalog = AdapterCatalog(url, base.name)
        self.catalog.claim_unlabelled()
        self._store = store
        self.aliases = AliasTable(self.catalog.engine, base.name)
        for alias, adapter in self.aliases.all().items():
            metrics.ALIAS_TARGET.labels(alias, adapter).set(1)
        self._served: dict[str, tuple[AdapterRecord, AdapterHandle]] = {}
        # name -> (path, created) of rows that failed to load here: not retried every sync,
        # only when the row changes (another replica re-added the name).
        self.unloadable: dict[str, tuple[tuple[str, int], str]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ids = itertools.count(1)

    @property
    def store(self) -> AdapterStore:
        if self._store is None:
            self._store = AdapterStore(adapter_store_dir(self.base.name))
        return self._store

    # -- queries -----------------------------------------------------------------------
    def list(self, scope: str | None = None) -> list[AdapterRecord]:
        """Served adapters ``scope`` may see (None: all), oldest first."""
        return sorted((rec for rec, _ in self._served.values() if rec.visible_to(scope)),
                      key=lambda r: (r.created, r.name))

    def publish(self, name: str) -> AdapterRecord:
        """Share ``name`` with every project (404 when not served)."""
        record = self.get(name)
        if record is None:
            raise NotFound(f"no adapter named {name!r} is served", param="name",
                           code="adapter_not_found")
        if not record.shared:
            self.catalog.set_shared(name)
            record.shared = True
            logger.info("adapter %s (project %s) is now shared", name, record.project)
        return record

    def get(self, name: str) -> AdapterRecord | None:
        entry = self._served.get(name)
        return entry[0] if entry else None

    def handle(self, name: str) -> AdapterHandle | None:
        """The engine handle of a served adapter or of an alias's target, or None."""
        entry = self._served.get(self._adapter_name(name))
        return entry[1] if entry else None

    def resolve(self, name: str) -> AdapterRecord | None:
        """The served adapter ``name`` means: itself, or an alias's target."""
        return self.get(self._adapter_name(name))

    def _adapter_name(self, name: str) -> str:
        return self.aliases.target(name) or name

    # -- aliases -----------------------------------------------------------------------
    def promote(self, alias: str, adapter: str, *, actor: str, reason: str,
                evidence: dict[str, Any] | None = None, project: str | None = None) -> Decision:
        """Point ``alias`` at the served adapter ``adapter``. ``project``: the project
        promoting (a job's), which owns an alias this creates and shares nothing; None: an
        admin's promotion (a new alias is shared). Who may move whose alias:
        ``service.tenancy.alias_refusal``, checked by the caller."""
        self._check_alias_name(alias)
        if self.get(adapter) is None:
            raise NotFound(f"no adapter named {adapter!r} is served", param="adapter",
                           code="adapter_not_found")
        if project is None:
            self.publish(adapter)  # an admin's alias may serve every project: share its target
        decision = self.aliases.record(alias, "promote", adapter=adapter, actor=actor,
                                       reason=reason, evidence=evidence, project=project)
        self._set_alias_metric(alias, decision.previous, adapter)
        logger.info("alias %s -> %s (%s: %s)", alias, adapter, actor, reason)
        return decision

    def refuse(self, alias: str, adapter: str, *, actor: str, reason: str,
               evidence: dict[str, Any] | None = None) -> Decision:
        """Record that ``adapter`` was not promoted to ``alias`` (the alias is unchanged)."""
        self._check_alias_name(alias)
        return self.aliases.record(alias, "refused", adapter=adapter, actor=actor,
                                   reason=reason, evidence=evidence)

    def rollback(self, alias: str, *, actor: str, reason: str = "manual rollback") -> Decision:
        """Point ``alias`` back at what it served before its newest promotion."""
        if self.aliases.target(alias) is None:
            raise NotFound(f"no alias named {alias!r}", param="alias", code="alias_not_found")
        previous = self.aliases.rollback_target(alias)
        if previous is None:
            raise Conflict(f"alias {alias!r} has no earlier target to roll back to",
                           param="alias", code="nothing_to_roll_back")
        if self.get(previous) is None:
            raise Conflict(f"alias {alias!r} would roll back to {previous!r}, which is no longer "
                           "served; promote a served adapter instead", param="alias",
                           code="adapter_not_found")
        decision = self.aliases.record(alias, "rollback", adapter=previous, actor=actor,
                                       reason=reason)
        self._set_alias_metric(alias, decision.previous, previous)
        return decision

    def delete_alias(self, alias: str, *, actor: str) -> Decision:
        if self.aliases.target(alias) is None:
            raise NotFound(f"no alias named {alias!r}", param="alias", code="alias_not_found")
        decision = self.aliases.record(alias, "delete", adapter=None, actor=actor,
                                       reason="alias deleted")
        self._set_alias_metric(alias, decision.previous, None)
        return decision

    def _check_alias_name(self, alias: str) -> None:
        check_name(alias, self.base.name)
        if alias in self._served or self.catalog.get(alias) is not None:
            raise BadRequest(f"{alias!r} is an adapter's name; an alias needs a name of its own",
                             param="alias", code="alias_is_adapter")

    @staticmethod
    def _set_alias_metric(alias: str, old: str | None, new: str | None) -> None:
        if old is not None and old != new:
            try:
                metrics.ALIAS_TARGET.remove(alias, old)
            except KeyError:
                pass
        if new is not None:
            metrics.ALIAS_TARGET.labels(alias, new).set(1)

    def _take_aliases(self, targets: dict[str, str]) -> None:
        """Adopt the database's aliases (another replica's moves) and their metrics."""
        previous = self.aliases.replace(targets)
        for alias in previous.keys() | targets.keys():
            old, new = previous.get(alias), targets.get(alias)
            if old != new:
                self._set_alias_metric(alias, old, new)
                logger.info("alias %s -> %s (from the database)", alias, new)

    # -- changes -----------------------------------------------------------------------
    async def add(
        self, name: str, path: str | Path, *, source: str = "api", owned_path: bool = False,
        project: str = DEFAULT_PROJECT, shared: bool = True, publish: bool = False,
    ) -> AdapterRecord:
        """Check ``path`` and hot-load it under ``name`` for ``project`` (every project when
        ``shared``); insert its row, so every replica serves it after its next sync.

        ``publish``: serve a copy published into the adapter store (a fine-tuning job's
        folder, which only this pod may see), owned and deleted with the adapter.
        Raises AdapterRejected (with the reason) when a check or the engine load fails.
        """
        check_name(name, self.base.name)
        if self.aliases.target(name) is not None:
            raise AdapterRejected(f"{name!r} is an alias; an adapter needs a name of its own",
                                  param="name", code="adapter_exists")
        async with self._locks[name]:
            if name in self._served or await asyncio.to_thread(self.catalog.get, name):
                raise AdapterRejected(
                    f"an adapter named {name!r} is already served; delete it first",
                    param="name", code="adapter_exists",
                )
            path = Path(path)
            if publish:
                # Checked before the copy: a rejected folder never reaches the store.
                await asyncio.to_thread(check_adapter, path.expanduser().resolve(), self.base,
                                        self.max_lora_rank)
                path = await asyncio.to_thread(self.store.publish_copy, name, path)
                owned_path = True
            try:
                record, handle = await self._loaded(name, path, source, owned_path)
                record.project, record.shared = project, shared
                try:
                    await asyncio.to_thread(self.catalog.insert, record)
                except BaseException:
                    await self.engine.remove_adapter(handle)
                    raise
            except BaseException:
                if publish:
                    self.store.discard(path)
                raise
            self._served[name] = (record, handle)
            self.unloadable.pop(name, None)
            metrics.ADAPTERS_LOADED.set(len(self._served))
            logger.info("serving adapter %s (rank %d) from %s", name, record.rank, record.path)
            return record

    async def _loaded(self, name: str, path: Path, source: str,
                      owned_path: bool) -> tuple[AdapterRecord, AdapterHandle]:
        """``_load`` with the load metrics."""
        started = time.perf_counter()
        try:
            loaded = await self._load(name, path, source, owned_path)
        except AdapterRejected:
            metrics.ADAPTER_OPS.labels("load", "rejected").inc()
            raise
        metrics.ADAPTER_OPS.labels("load", "ok").inc()
        metrics.ADAPTER_OP_SECONDS.labels("load").observe(time.perf_counter() - started)
        return loaded

    async def _load(
        self, name: str, path: Path, source: str, owned_path: bool
    ) -> tuple[AdapterRecord, AdapterHandle]:
        path = path.expanduser().resolve()
        # File checks read safetensors headers: off the event loop so streams keep flowing.
        info = await asyncio.to_thread(check_adapter, path, self.base, self.max_lora_rank)
        handle = AdapterHandle(name=name, int_id=next(self._ids), path=str(path),
                               engine=info.engine)
        try:
            await self.engine.add_adapter(handle)
        except ValueError as exc:
            raise AdapterRejected(str(exc)) from exc
        record = AdapterRecord(
            name=name, path=str(path), base_model=self.base.name, rank=info.rank,
            alpha=info.alpha, target_modules=info.target_modules, source=source,
            created=int(time.time()), manifest=info.manifest, owned_path=owned_path,
            method=info.method, engine=info.engine,
        )
        return record, handle

    async def remove(self, name: str) -> AdapterRecord:
        """Stop serving ``name`` on every replica (404 when no replica serves it): delete
        its row, unload it here, then delete its folder when the registry owns it. Other
        replicas unload it on their next sync; running requests on it finish."""
        async with self._locks[name]:
            entry = self._served.get(name)
            started = time.perf_counter()
            # Conflict while an alias points at it (checked in the database, so an alias
            # another replica just made counts).
            row = await asyncio.to_thread(self.catalog.delete, name)
            if row is None and entry is None:
                raise NotFound(f"no adapter named {name!r} is served", param="name",
                               code="adapter_not_found")
            record = entry[0] if entry else row
            if entry is not None:
                await self._unload(name)
                metrics.ADAPTER_OP_SECONDS.labels("unload").observe(time.perf_counter() - started)
            if row is not None and row.owned_path:
                await self._discard_folder(row.path)
            logger.info("stopped serving adapter %s", name)
            return record  # type: ignore[return-value]

    async def _unload(self, name: str) -> None:
        _, handle = self._served.pop(name)
        await self.engine.remove_adapter(handle)
        metrics.ADAPTER_OPS.labels("unload", "ok").inc()
        metrics.ADAPTERS_LOADED.set(len(self._served))

    async def _serve_row(self, row: AdapterRecord) -> str | None:
        """Load the catalog row ``row`` here (another replica's adapter, or this one's from
        an earlier run); return why it cannot be served, or None."""
        async with self._locks[row.name]:
            if row.name in self._served:
                return None
            try:
                record, handle = await self._loaded(row.name, Path(row.path), row.source,
                                                    row.owned_path)
            except AdapterRejected as exc:
                self.unloadable[row.name] = ((row.path, row.created), exc.message)
                return exc.message
            # The row's facts, so every replica lists the adapter alike.
            record.path, record.created = row.path, row.created
            record.project, record.shared = row.project, row.shared
            self._served[row.name] = (record, handle)
            self.unloadable.pop(row.name, None)
            metrics.ADAPTERS_LOADED.set(len(self._served))
            logger.info("serving adapter %s (rank %d) from %s", row.name, record.rank, row.path)
            return None

    async def restore(self) -> list[tuple[str, str]]:
        """Load every adapter the catalog has (at start); return ``(name, reason)`` of those
        that no longer pass. With the per-pod file they are dropped from it; in a shared
        database the row stays for the replicas that can serve it."""
        rows = await asyncio.to_thread(self.catalog.rows)
        failed: list[tuple[str, str]] = []
        for row in rows.values():
            # A row stays until its adapter fails the checks: a crash mid-restore must not
            # forget adapters that were served.
            reason = await self._serve_row(row)
            if reason is None:
                continue
            logger.warning("adapter %s was not restored: %s", row.name, reason)
            if self._per_pod:
                await asyncio.to_thread(self.catalog.delete, row.name, force=True)
            failed.append((row.name, reason))
        self._take_aliases(await asyncio.to_thread(self.aliases.read))
        return failed

    async def sync(self) -> None:
        """Converge on the catalog: load rows added elsewhere, unload rows removed
        elsewhere (or re-added under the same name: reloaded), take ``shared`` flags and
        aliases. A row that failed to load here is retried only once it changes."""
        rows = await asyncio.to_thread(self.catalog.rows)
        targets = await asyncio.to_thread(self.aliases.read)
        for name, (record, _) in list(self._served.items()):
            row = rows.get(name)
            if row is not None and (row.path, row.created) == (record.path, record.created):
                record.shared, record.project = row.shared, row.project
                continue
            async with self._locks[name]:
                # Re-read under the lock: this replica's own add may have just inserted it.
                current = await asyncio.to_thread(self.catalog.get, name)
                served = self._served.get(name)
                if served is None or (current is not None and (current.path, current.created)
                                      == (served[0].path, served[0].created)):
                    continue
                logger.info("adapter %s was removed or replaced on another replica; unloading",
                            name)
                await self._unload(name)
        for name, row in rows.items():
            if name in self._served:
                continue
            known = self.unloadable.get(name)
            if known is not None and known[0] == (row.path, row.created):
                continue
            reason = await self._serve_row(row)
            if reason is not None:
                logger.warning("adapter %s (added on another replica) is not served here: %s",
                               name, reason)
        for name in set(self.unloadable) - rows.keys():
            del self.unloadable[name]
        self._take_aliases(targets)

    async def _discard_folder(self, path: str) -> None:
        """Delete a removed adapter's folder: at once on the per-pod file, else after
        ``folder_grace_s`` (a folder a shutdown leaves behind stays in the store)."""
        if self.folder_grace_s <= 0:
            await asyncio.to_thread(self.store.discard, path)
            return

        async def later() -> None:
            await asyncio.sleep(self.folder_grace_s)
            await asyncio.to_thread(self.store.discard, path)

        task = asyncio.create_task(later())
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    async def discards_done(self) -> None:
        """Wait until the removed adapters' folders waiting for their grace are deleted."""
        await asyncio.gather(*self._discards)

    async def run_sync(self, interval_s: float) -> None:
        """``sync`` every ``interval_s`` seconds until cancelled (a failed pass, e.g. the
        database unreachable, is logged and retried on the next tick)."""
        if not self._per_pod:
            self.folder_grace_s = REMOVED_FOLDER_SYNCS * interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:
                logger.exception("adapter registry sync failed")

    def close(self) -> None:
        """Nothing to release: the engine's connections belong to the storage layer."""
