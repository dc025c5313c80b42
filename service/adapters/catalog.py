"""The adapter catalog: what every replica serves, without an engine.

Two halves, both shared by the replicas of one deployment:

- the ``adapters`` rows on the storage layer (tuneserve.database), one per adapter of a base
  model: name → folder, rank, owning project, ``shared`` flag. ``AdapterCatalog`` is the
  table code; the serving registry (registry.py) loads what the rows say, and so does every
  other replica on its next sync.
- the adapter store, ``$TUNESERVE_SHARED_DIR/adapter-store/<base>``: uploads and fine-tuned
  adapters are published there (``AdapterStore``). A folder appears under its final name
  only by ``os.rename`` of a finished temp folder in the same store, and a row names it only
  after that, so no replica ever loads a half-written adapter. Removal deletes the row, then
  the folder.

``register_trained_adapter`` is the whole path for a process without an engine (the
``tuneserve worker``): check the folder as the registry would, publish it, insert a private
row; the serving replicas load it on their next sync.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service.adapters.checks import BaseModelShape, check_adapter, check_name
from service.errors import AdapterRejected, Conflict
from service.tenancy import DEFAULT_PROJECT, in_scope
from tuneserve.database import database_url, engine_for, write_transaction
from tuneserve.database.tables import adapters, aliases
from tuneserve.home import shared_dir, tuneserve_home

# Temp entries of an unfinished publish (a crash leaves them behind); never loaded, swept
# once they are older than any publish can take.
_TEMP_PREFIXES = (".tmp-", ".upload-", ".archive-")
STALE_TEMP_S = 3600


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
    # True when the registry created the folder (an upload, a published job's adapter) and
    # deletes it on removal.
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


def registry_sqlite(base_model: str) -> Path:
    """The embedded database of ``base_model``'s registry when no URL is configured (the
    per-base file the registry always used)."""
    return tuneserve_home() / "registry" / f"{base_model}.sqlite"


def registry_url(base_model: str) -> str:
    """``TUNESERVE_DATABASE_URL``, else the per-base SQLite file."""
    return database_url(registry_sqlite(base_model))


def adapter_store_dir(base_model: str) -> Path:
    """Where ``base_model``'s uploaded and fine-tuned adapters live, on the shared volume."""
    return shared_dir() / "adapter-store" / base_model


class AdapterStore:
    """Adapter folders published atomically into one folder every replica reads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def new_path(self, name: str) -> Path:
        """A fresh final path for ``name`` (a random suffix: a name deleted and added again,
        or added on two replicas at once, never reuses a folder another row may name)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{name}-{secrets.token_hex(4)}"

    def temp_dir(self) -> Path:
        """A temp folder in the store (same filesystem: ``os.rename`` out of it is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

    def publish_copy(self, name: str, source: Path) -> Path:
        """Copy the folder ``source`` into the store; the copy appears complete or not at all."""
        staging = self.temp_dir()
        try:
            shutil.copytree(source, staging / "adapter", symlinks=False)
            final = self.new_path(name)
            os.rename(staging / "adapter", final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def discard(self, path: str | Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def sweep(self, older_than_s: float = STALE_TEMP_S) -> list[Path]:
        """Remove temp entries a crashed publish left (old enough that no replica is still
        writing them); return what was removed."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(_TEMP_PREFIXES) and entry.stat().st_mtime < cutoff:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        return removed


class AdapterCatalog:
    """The ``adapters`` rows of one base model on the storage layer (synchronous: async
    callers go through ``asyncio.to_thread``)."""

    def __init__(self, url: str, base_model: str) -> None:
        self.base_model = base_model
        self.engine = engine_for(url)

    def _mine(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return table.c.base_model == self.base_model

    def claim_unlabelled(self) -> None:
        """Give rows of a per-base file from before the layer (aliases and decisions never
        said their base: migration 0004 left them '') this registry's base."""
        from tuneserve.database.tables import alias_decisions

        with write_transaction(self.engine) as db:
            for table in (aliases, alias_decisions):
                db.execute(table.update().where(table.c.base_model == "")
                           .values(base_model=self.base_model))

    @staticmethod
    def _record(row: sa.RowMapping) -> AdapterRecord:
        return AdapterRecord(
            name=row["name"], path=row["path"], base_model=row["base_model"], rank=row["rank"],
            alpha=row["alpha"], target_modules=list(row["target_modules"] or []),
            source=row["source"], created=row["created"], manifest=row["manifest"],
            owned_path=bool(row["owned_path"]), project=row["project"],
            shared=bool(row["shared"]))

    def rows(self) -> dict[str, AdapterRecord]:
        """Every adapter row of this base, oldest first."""
        query = sa.select(adapters).where(self._mine(adapters)).order_by(
            adapters.c.created, adapters.c.name)
        with self.engine.connect() as db:
            return {r["name"]: self._record(r) for r in db.execute(query).mappings()}

    def get(self, name: str) -> AdapterRecord | None:
        query = sa.select(adapters).where(self._mine(adapters), adapters.c.name == name)
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return self._record(row) if row is not None else None

    def insert(self, record: AdapterRecord) -> None:
        """Add ``record``'s row; AdapterRejected (adapter_exists) when an adapter or an alias
        of this base already has the name (on any replica)."""
        with write_transaction(self.engine) as db:
            taken = db.execute(sa.select(adapters.c.name).where(
                self._mine(adapters), adapters.c.name == record.name)).first()
            aliased = db.execute(sa.select(aliases.c.name).where(
                self._mine(aliases), aliases.c.name == record.name)).first()
            if taken is not None or aliased is not None:
                what = "an alias" if aliased is not None else "an adapter"
                raise AdapterRejected(f"{record.name!r} is already {what}'s name; delete it first",
                                      param="name", code="adapter_exists")
            try:
                db.execute(adapters.insert().values(
                    base_model=self.base_model, name=record.name, path=record.path,
                    rank=record.rank, alpha=record.alpha, target_modules=record.target_modules,
                    source=record.source, created=record.created, manifest=record.manifest,
                    owned_path=int(record.owned_path), project=record.project,
                    shared=int(record.shared)))
            except sa.exc.IntegrityError:  # another replica's insert won the race
                raise AdapterRejected(f"an adapter named {record.name!r} is already served; "
                                      "delete it first", param="name",
                                      code="adapter_exists") from None

    def set_shared(self, name: str) -> None:
        with write_transaction(self.engine) as db:
            db.execute(adapters.update().where(self._mine(adapters), adapters.c.name == name)
                       .values(shared=1))

    def delete(self, name: str, *, force: bool = False) -> AdapterRecord | None:
        """Delete ``name``'s row and return it (None when there was none). Conflict
        (adapter_in_use) while an alias points at it, unless ``force``."""
        lock = sa.select(adapters).where(self._mine(adapters), adapters.c.name == name)
        with write_transaction(self.engine) as db:
            # The row lock orders this against a promotion to it on another replica
            # (AliasTable.record locks the same row).
            row = db.execute(lock.with_for_update()).mappings().first()
            if row is None:
                return None
            if not force:
                users = db.execute(sa.select(aliases.c.name).where(
                    self._mine(aliases), aliases.c.adapter == name).order_by(aliases.c.name)
                ).scalars().all()
                if users:
                    raise Conflict(
                        f"adapter {name!r} is served as alias {', '.join(map(repr, users))}; "
                        "promote another adapter to it or delete the alias first",
                        param="name", code="adapter_in_use")
            db.execute(adapters.delete().where(self._mine(adapters), adapters.c.name == name))
            return self._record(row)


def _max_lora_rank() -> int:
    from service.settings import Settings

    configured = os.environ.get("TUNESERVE_MAX_LORA_RANK", "").strip()
    return int(configured) if configured else int(Settings.model_fields["max_lora_rank"].default)


def register_trained_adapter(name: str, adapter: Path, *, base_model: str, project: str,
                             base_path: Path | None = None, max_lora_rank: int | None = None,
                             url: str | None = None, store: AdapterStore | None = None) -> str:
    """Publish a fine-tuning job's adapter folder for the serving replicas; return its path
    in the store.

    Checks the folder as the registry would (name, files, rank, base shapes), copies it
    into the adapter store atomically and inserts a row private to ``project``
    (source "fine_tuning"). Replicas load it on their next sync. Raises AdapterRejected
    with the reason (the folder is not published then).

    ``base_path`` is the base's checkpoint (default: the prepared ``base_model``);
    ``max_lora_rank`` defaults to the server's setting (``TUNESERVE_MAX_LORA_RANK``);
    ``url`` to the registry's database, ``store`` to the shared adapter store.
    """
    from training.base_models import resolve_model_path

    check_name(name, base_model)
    base = BaseModelShape.from_checkpoint(base_model, base_path or resolve_model_path(base_model))
    info = check_adapter(Path(adapter).expanduser().resolve(), base,
                         max_lora_rank or _max_lora_rank())
    catalog = AdapterCatalog(url or registry_url(base_model), base_model)
    store = store or AdapterStore(adapter_store_dir(base_model))
    stored = store.publish_copy(name, Path(adapter))
    record = AdapterRecord(
        name=name, path=str(stored), base_model=base_model, rank=info.rank, alpha=info.alpha,
        target_modules=info.target_modules, source="fine_tuning", created=int(time.time()),
        manifest=info.manifest, owned_path=True, project=project, shared=False,
        method=info.method, engine=info.engine)
    try:
        catalog.insert(record)
    except BaseException:
        store.discard(stored)
        raise
    return str(stored)
