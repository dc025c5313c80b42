"""Several replicas, one truth: two registries (two fake engines) on one database and one
adapter store converge through ``sync()``, on SQLite and PostgreSQL (the ``database_url``
fixture). The real end to end (two ``tuneserve serve`` processes) is
tests/integration/test_replicas_adapters.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.adapters.aliases import AliasTable
from service.adapters.catalog import AdapterStore, adapter_store_dir, register_trained_adapter
from service.adapters.checks import BaseModelShape
from service.adapters.registry import AdapterRegistry
from service.errors import AdapterRejected, Conflict
from tests.unit import test_service_api
from tests.unit.service_fake_engine import FakeEngine
from tests.unit.service_lora import make_lora_adapter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("replica-adapter") / "a")


@pytest.fixture
def replicas(database_url, tiny_model_dir, tmp_path, monkeypatch):
    """Two registries of base "tiny", each with its own engine and home, one database and
    one shared dir (hence one adapter store)."""
    monkeypatch.setenv("TUNESERVE_SHARED_DIR", str(tmp_path / "shared"))
    base = BaseModelShape.from_checkpoint("tiny", tiny_model_dir)
    made = []
    for name in ("a", "b"):
        engine = FakeEngine(model_path=tiny_model_dir, tokenizer=None)
        made.append(AdapterRegistry(tmp_path / name / "registry.sqlite", engine, base, 16,
                                    url=database_url))
    return made


def _alias_metric(alias: str, adapter: str) -> float | None:
    return REGISTRY.get_sample_value("tuneserve_alias_target",
                                     {"alias": alias, "adapter": adapter})


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


async def test_adds_and_removals_on_one_replica_reach_the_other(replicas, tiny_adapter):
    a, b = replicas
    await a.add("shared-one", tiny_adapter)
    assert b.get("shared-one") is None  # nothing until B syncs
    await b.sync()
    assert b.get("shared-one").path == a.get("shared-one").path
    assert "shared-one" in b.engine.adapters
    with pytest.raises(AdapterRejected, match="already served"):
        await b.add("shared-one", tiny_adapter)  # one name, one adapter, across replicas

    await a.remove("shared-one")
    await b.sync()
    assert b.list() == [] and b.engine.adapters == {}


async def test_a_jobs_adapter_is_published_private_and_removed_with_its_folder(replicas,
                                                                               tiny_adapter):
    a, b = replicas
    record = await a.add("ft:tiny:p:1", tiny_adapter, source="fine_tuning", project="p",
                         shared=False, publish=True)
    stored = Path(record.path)
    assert stored.parent == adapter_store_dir("tiny") and stored.is_dir()
    await b.sync()
    assert [r.name for r in b.list("p")] == ["ft:tiny:p:1"]
    assert b.list("q") == []  # private on B too
    a.publish("ft:tiny:p:1")
    await b.sync()
    assert [r.name for r in b.list("q")] == ["ft:tiny:p:1"]

    b.folder_grace_s = 0.05
    await b.remove("ft:tiny:p:1")  # removed on B: the row; A unloads on sync
    # The folder outlives the row for a grace (A still serves from it until its sync).
    assert stored.is_dir()
    await a.sync()
    assert a.list() == [] and a.engine.adapters == {}
    await b.discards_done()
    assert not stored.exists() and tiny_adapter.is_dir()


async def test_an_alias_promoted_on_one_replica_routes_on_the_other(replicas, tiny_adapter,
                                                                    tmp_path):
    a, b = replicas
    for name in ("first", "second"):
        await a.add(name, tiny_adapter)
    a.promote("stable", "first", actor="t", reason="r")
    await b.sync()
    assert b.resolve("stable").name == "first" and b.handle("stable").name == "first"
    assert _alias_metric("stable", "first") == 1

    # A third replica (no metrics of its own in this process) moves it: B follows, and its
    # metric moves with it.
    AliasTable(b.catalog.engine, "tiny").record("stable", "promote", adapter="second",
                                               actor="t", reason="r")
    await b.sync()
    assert b.handle("stable").name == "second"
    assert _alias_metric("stable", "second") == 1 and _alias_metric("stable", "first") is None
    assert [d.adapter for d in b.aliases.decisions("stable")] == ["second", "first"]
    # The alias guards its target on every replica: A's removal is refused by the database.
    with pytest.raises(Conflict, match="alias 'stable'"):
        await a.remove("second")


async def test_a_name_removed_and_added_again_elsewhere_is_reloaded(replicas, tiny_adapter,
                                                                    tmp_path):
    a, b = replicas
    await a.add("x", tiny_adapter)
    await b.sync()
    await a.remove("x")
    other = make_lora_adapter(Path(b.engine.model_path), tmp_path / "other", r=4, seed=1)
    await a.add("x", other)
    await b.sync()
    assert b.get("x").rank == 4 and b.engine.adapters["x"].path == str(other)


async def test_a_worker_registers_a_trained_adapter_the_replicas_load(replicas, tiny_adapter,
                                                                      tiny_model_dir, tmp_path):
    a, _ = replicas
    path = register_trained_adapter("ft:tiny:p:2", tiny_adapter, base_model="tiny",
                                    project="p", base_path=tiny_model_dir, max_lora_rank=16)
    assert Path(path).parent == adapter_store_dir("tiny")
    await a.sync()
    record = a.get("ft:tiny:p:2")
    assert (record.source, record.project, record.shared, record.path) == (
        "fine_tuning", "p", False, path)
    assert a.list("q") == []

    # Refused like the registry refuses (rank above the limit): nothing reaches the store.
    too_big = make_lora_adapter(tiny_model_dir, tmp_path / "big", r=32)
    with pytest.raises(AdapterRejected, match="max_lora_rank"):
        register_trained_adapter("ft:tiny:p:3", too_big, base_model="tiny", project="p",
                                 base_path=tiny_model_dir, max_lora_rank=16)
    with pytest.raises(AdapterRejected, match="already"):
        register_trained_adapter("ft:tiny:p:2", tiny_adapter, base_model="tiny", project="p",
                                 base_path=tiny_model_dir, max_lora_rank=16)
    assert _visible(adapter_store_dir("tiny")) == [Path(path).name]


def test_a_publish_killed_mid_copy_leaves_no_visible_folder(tmp_path, tiny_adapter):
    """The process dies (os._exit: no cleanup runs) after copying one file: the store shows
    no adapter folder, only a hidden temp entry that ``sweep`` removes."""
    store_root = tmp_path / "store"
    script = (
        "import os, shutil, sys\n"
        "from service.adapters.catalog import AdapterStore\n"
        "copied = []\n"
        "def dying_copy(src, dst, **kw):\n"
        "    if copied: os._exit(3)\n"
        "    copied.append(shutil.copy2(src, dst))\n"
        "real = shutil.copytree\n"
        "shutil.copytree = lambda s, d, **kw: real(s, d, copy_function=dying_copy)\n"
        f"AdapterStore({str(store_root)!r}).publish_copy('a1', {str(tiny_adapter)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 3
    assert _visible(store_root) == []
    leftovers = [p for p in store_root.iterdir() if p.name.startswith(".")]
    assert leftovers and any(p.is_file() for p in leftovers[0].rglob("*"))
    store = AdapterStore(store_root)
    assert store.sweep(older_than_s=3600) == []  # too young: could be a live publish
    assert store.sweep(older_than_s=0) == leftovers and list(store_root.iterdir()) == []


async def test_a_pre_layer_registry_file_is_adopted_in_place(tmp_path, tiny_model_dir,
                                                             tiny_adapter, monkeypatch):
    """A per-base file from before the storage layer (sqlite3 schema, an alias and its
    decision): the registry serves its adapter and alias and keeps the decision log."""
    import sqlite3

    monkeypatch.delenv("TUNESERVE_DATABASE_URL", raising=False)
    db_path = tmp_path / "registry" / "tiny.sqlite"
    db_path.parent.mkdir()
    with sqlite3.connect(db_path) as db:
        db.executescript("""
            CREATE TABLE adapters (name TEXT PRIMARY KEY, path TEXT NOT NULL,
              base_model TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL,
              target_modules TEXT NOT NULL, source TEXT NOT NULL, created INTEGER NOT NULL,
              manifest TEXT, owned_path INTEGER NOT NULL DEFAULT 0,
              project TEXT NOT NULL DEFAULT 'default', shared INTEGER NOT NULL DEFAULT 1);
            CREATE TABLE aliases (name TEXT PRIMARY KEY, adapter TEXT NOT NULL,
              updated INTEGER NOT NULL);
            CREATE TABLE alias_decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT,
              alias TEXT NOT NULL, action TEXT NOT NULL, adapter TEXT, previous TEXT,
              actor TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT,
              created INTEGER NOT NULL);
            CREATE INDEX alias_decisions_alias ON alias_decisions(alias, seq);
        """)
        db.execute("INSERT INTO adapters VALUES ('old', ?, 'tiny', 8, 8, ?, 'api', 1, NULL, 0,"
                   " 'p', 0)", (str(tiny_adapter), json.dumps(["q_proj"])))
        db.execute("INSERT INTO aliases VALUES ('stable', 'old', 1)")
        db.execute("INSERT INTO alias_decisions (alias, action, adapter, previous, actor, "
                   "reason, evidence, created) VALUES ('stable', 'promote', 'old', NULL, 'gate',"
                   " 'better', '{\"delta\": 0.1}', 1)")
    engine = FakeEngine(model_path=tiny_model_dir, tokenizer=None)
    registry = AdapterRegistry(db_path, engine, BaseModelShape.from_checkpoint(
        "tiny", tiny_model_dir), 16)
    assert await registry.restore() == []
    old = registry.get("old")
    assert (old.project, old.shared) == ("p", False)
    assert registry.catalog.get("old").target_modules == ["q_proj"]  # the JSON text, read
    assert registry.handle("stable").name == "old"
    [decision] = registry.aliases.decisions("stable")
    assert (decision.actor, decision.evidence) == ("gate", {"delta": 0.1})
    registry.promote("stable", "old", actor="t", reason="again")
    assert [d.seq for d in registry.aliases.decisions("stable")] == [2, 1]


# -- two apps (fake engines) on one database: the upload route and the sync task ---------
make_client = test_service_api.make_client  # the shared fixture: the app on a fake engine


def _archive(folder: Path) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname="adapter")
    return buffer.getvalue()


def _eventually(check, what: str, timeout_s: float = 10.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)


def test_an_upload_lands_in_the_shared_store_and_reaches_the_other_app(
        database_url, make_client, tiny_adapter, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("TUNESERVE_SHARED_DIR", str(shared))
    admin = {"Authorization": f"Bearer {test_service_api.ADMIN_KEY}"}
    one, two = (make_client(admin_api_keys=test_service_api.ADMIN_KEY, sync_interval_s=0.1)
                for _ in range(2))
    response = one.post("/v1/adapters", data={"name": "up"}, headers=admin,
                        files={"file": ("a.tar.gz", _archive(tiny_adapter))})
    assert response.status_code == 201, response.text
    stored = Path(response.json()["path"])
    assert stored.parent == shared / "adapter-store" / "tiny" and stored.is_dir()

    def served_on_two() -> bool:
        return two.get("/v1/adapters/up", headers=admin).status_code == 200

    _eventually(served_on_two, "the upload served on the second app")
    assert two.engine.adapters["up"].path == str(stored)
    assert one.delete("/v1/adapters/up", headers=admin).status_code == 200
    assert stored.is_dir()  # kept while the other app may still serve from it
    _eventually(lambda: not served_on_two() and "up" not in two.engine.adapters,
                "the removal reaches the second app")
    # Then deleted, five sync intervals (0.5 s here) after the removal.
    _eventually(lambda: not stored.exists(), "the removed adapter's folder deleted")
