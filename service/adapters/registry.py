"""The adapter registry: the single source of truth for what is served.

name → path, base, rank, manifest, state; persisted in SQLite under ``$TUNESERVE_HOME`` so a
restarted server reloads what it served. Everything that adds an adapter (folder watch,
upload, API call, finished fine-tuning job) goes through :meth:`AdapterRegistry.add`.

Each adapter has an owning project and a ``shared`` flag. What an admin adds (API, upload,
watched folder) is shared: every project may use it. A fine-tuning job's adapter is
private to the job's project until an admin publishes it or promotes it to an alias;
``scope`` arguments (a project, or None for admin) filter what a caller sees.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service import metrics
from service.adapters.aliases import AliasTable, Decision
from service.adapters.checks import BaseModelShape, check_adapter, check_name
from service.engine import AdapterHandle, Engine
from service.errors import AdapterRejected, BadRequest, Conflict, NotFound
from service.tenancy import DEFAULT_PROJECT, in_scope

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    base_model TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha REAL,
    target_modules TEXT NOT NULL,
    source TEXT NOT NULL,
    created INTEGER NOT NULL,
    manifest TEXT,
    owned_path INTEGER NOT NULL DEFAULT 0,
    project TEXT NOT NULL DEFAULT 'default',
    shared INTEGER NOT NULL DEFAULT 1
)
"""
# Added after the first release; adapters registered before them stay shared (they were
# visible to every key), owned by the default project.
_ADDED_COLUMNS = {"project": "TEXT NOT NULL DEFAULT 'default'",
                  "shared": "INTEGER NOT NULL DEFAULT 1"}
_COLUMNS = ("name", "path", "base_model", "rank", "alpha", "target_modules", "source", "created",
            "manifest", "owned_path", "project", "shared")


@dataclass
class AdapterRecord:
    """One served adapter."""

    name: str
    path: str
    base_model: str
    rank: int
    alpha: float | None
    target_modules: list[str]
    source: str
    created: int
    manifest: dict[str, Any] | None = None
    # True when the registry created the folder (an upload) and deletes it on removal.
    owned_path: bool = False
    project: str = DEFAULT_PROJECT
    # Every project may use it (admin-added, published or promoted); else only ``project``.
    shared: bool = True
    # How it was trained (lora, dora, ia3, vera, prompt_tuning, ...) and which engine
    # serves it ("vllm" or "peft"); read from the folder at every load, not persisted.
    method: str = "lora"
    engine: str = "vllm"

    def public(self) -> dict[str, Any]:
        """The JSON the API shows (no internal flags)."""
        data = asdict(self)
        data.pop("owned_path")
        return data

    def visible_to(self, scope: str | None) -> bool:
        return self.shared or in_scope(self.project, scope)


class AdapterRegistry:
    """Checks, loads, persists and lists adapters for one engine and base model."""

    def __init__(self, db_path: Path, engine: Engine, base: BaseModelShape, max_lora_rank: int):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = engine
        self.base = base
        self.max_lora_rank = max_lora_rank
        self._db = sqlite3.connect(self.db_path, check_same_thread=False)
        # WAL: a kill -9 mid-write leaves the last committed registry intact.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(adapters)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE adapters ADD COLUMN {column} {kind}")
        self._db.commit()
        self.aliases = AliasTable(self._db)
        for alias, adapter in self.aliases.all().items():
            metrics.ALIAS_TARGET.labels(alias, adapter).set(1)
        self._served: dict[str, tuple[AdapterRecord, AdapterHandle]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ids = itertools.count(1)

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
            record.shared = True
            self._persist(record)
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
        target = self.aliases.target(alias)
        if target is None:
            raise NotFound(f"no alias named {alias!r}", param="alias", code="alias_not_found")
        decision = self.aliases.record(alias, "delete", adapter=None, actor=actor,
                                       reason="alias deleted")
        self._set_alias_metric(alias, target, None)
        return decision

    def _check_alias_name(self, alias: str) -> None:
        check_name(alias, self.base.name)
        if alias in self._served:
            raise BadRequest(f"{alias!r} is an adapter's name; an alias needs a name of its own",
                             param="alias", code="alias_is_adapter")

    @staticmethod
    def _set_alias_metric(alias: str, old: str | None, new: str | None) -> None:
        if old is not None:
            try:
                metrics.ALIAS_TARGET.remove(alias, old)
            except KeyError:
                pass
        if new is not None:
            metrics.ALIAS_TARGET.labels(alias, new).set(1)

    # -- changes -----------------------------------------------------------------------
    async def add(
        self, name: str, path: str | Path, *, source: str = "api", owned_path: bool = False,
        project: str = DEFAULT_PROJECT, shared: bool = True,
    ) -> AdapterRecord:
        """Check ``path`` and hot-load it under ``name`` for ``project`` (every project when
        ``shared``); persist it.

        Raises AdapterRejected (with the reason) when a check or the engine load fails.
        """
        check_name(name, self.base.name)
        if self.aliases.target(name) is not None:
            raise AdapterRejected(f"{name!r} is an alias; an adapter needs a name of its own",
                                  param="name", code="adapter_exists")
        async with self._locks[name]:
            if name in self._served:
                raise AdapterRejected(
                    f"an adapter named {name!r} is already served; delete it first",
                    param="name", code="adapter_exists",
                )
            started = time.perf_counter()
            try:
                record, handle = await self._load(name, Path(path), source, owned_path)
                record.project, record.shared = project, shared
            except AdapterRejected:
                metrics.ADAPTER_OPS.labels("load", "rejected").inc()
                raise
            metrics.ADAPTER_OPS.labels("load", "ok").inc()
            metrics.ADAPTER_OP_SECONDS.labels("load").observe(time.perf_counter() - started)
            self._served[name] = (record, handle)
            self._persist(record)
            metrics.ADAPTERS_LOADED.set(len(self._served))
            logger.info("serving adapter %s (rank %d) from %s", name, record.rank, record.path)
            return record

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
        """Stop serving ``name`` (404 when unknown); running requests on it finish."""
        async with self._locks[name]:
            entry = self._served.get(name)
            if entry is None:
                raise NotFound(f"no adapter named {name!r} is served", param="name",
                               code="adapter_not_found")
            record, handle = entry
            aliases = self.aliases.aliases_of(name)
            if aliases:
                raise Conflict(
                    f"adapter {name!r} is served as alias {', '.join(map(repr, aliases))}; "
                    "promote another adapter to it or delete the alias first",
                    param="name", code="adapter_in_use")
            started = time.perf_counter()
            del self._served[name]
            self._db.execute("DELETE FROM adapters WHERE name = ?", (name,))
            self._db.commit()
            await self.engine.remove_adapter(handle)
            metrics.ADAPTER_OPS.labels("unload", "ok").inc()
            metrics.ADAPTER_OP_SECONDS.labels("unload").observe(time.perf_counter() - started)
            metrics.ADAPTERS_LOADED.set(len(self._served))
            if record.owned_path:
                import shutil

                shutil.rmtree(record.path, ignore_errors=True)
            logger.info("stopped serving adapter %s", name)
            return record

    async def restore(self) -> list[tuple[str, str]]:
        """Reload every adapter persisted by an earlier run; return ``(name, reason)`` of
        those that no longer pass (they are dropped from the registry, the rest serve)."""
        rows = self._db.execute(
            "SELECT name, path, source, owned_path, project, shared FROM adapters "
            "ORDER BY created"
        ).fetchall()
        failed: list[tuple[str, str]] = []
        for name, path, source, owned, project, shared in rows:
            # The row stays until the adapter fails its checks: a crash mid-restore must not
            # forget adapters that were served (add() rewrites the row on success).
            try:
                await self.add(name, path, source=source, owned_path=bool(owned),
                               project=project, shared=bool(shared))
            except AdapterRejected as exc:
                logger.warning("adapter %s was not restored: %s", name, exc.message)
                self._db.execute("DELETE FROM adapters WHERE name = ?", (name,))
                self._db.commit()
                failed.append((name, exc.message))
        return failed

    def _persist(self, record: AdapterRecord) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO adapters ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))})",
            (
                record.name, record.path, record.base_model, record.rank, record.alpha,
                json.dumps(record.target_modules), record.source, record.created,
                json.dumps(record.manifest) if record.manifest is not None else None,
                int(record.owned_path), record.project, int(record.shared),
            ),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
