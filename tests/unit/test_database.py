"""The storage layer (tuneserve.database) on both backends: URLs, migrations, locking."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tuneserve.database import (
    DATABASE_URL_ENV,
    DatabaseURLError,
    create_engine,
    database_url,
    engine_for,
    migrate,
    normalize_url,
    write_transaction,
)
from tuneserve.database.tables import metadata


def test_url_defaults_to_the_embedded_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert database_url(tmp_path / "x.sqlite") == f"sqlite:///{tmp_path / 'x.sqlite'}"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_urls_use_psycopg3(scheme, tmp_path, monkeypatch):
    monkeypatch.setenv(DATABASE_URL_ENV, f" {scheme}://u:p%40ss@db:5432/tuneserve ")
    url = sa.engine.make_url(database_url(tmp_path / "unused.sqlite"))
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.database) == ("u", "p@ss", "db", "tuneserve")


@pytest.mark.parametrize("bad", ["mysql://db/x", "postgresql+psycopg2://db/x", "not a url"])
def test_unsupported_urls_are_refused_by_name(bad):
    with pytest.raises(DatabaseURLError, match=DATABASE_URL_ENV):
        normalize_url(bad)


def test_migrations_create_exactly_the_tables_the_code_uses(database_url):
    engine = engine_for(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert diff == []
    assert version  # stamped: the next start runs only newer migrations


def test_migrating_twice_and_concurrently_is_harmless(database_url):
    # Replicas starting together each migrate (separate engines = separate processes' pools).
    engines = [create_engine(database_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(engine):
        try:
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    migrate(engines[0])
    assert errors == []
    with engines[0].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    for engine in engines:
        engine.dispose()


def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_write_transaction_holds_the_writer_lock_from_its_start(database_url):
    """Two write transactions never interleave: the second waits for the first to commit,
    so a read-then-write inside one (a claim) sees the other's write."""
    engine = engine_for(database_url)
    table = sa.table("counter", sa.column("n", sa.Integer))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.execute(table.insert().values(n=0))
    lock_row = sa.select(table.c.n)
    if engine.dialect.name == "postgresql":
        lock_row = lock_row.with_for_update()
    reads = [threading.Event(), threading.Event()]

    def increment(me: int) -> None:
        with write_transaction(engine) as conn:
            n = conn.execute(lock_row).scalar_one()
            reads[me].set()
            if me == 0:
                # Were the lock not held from BEGIN, the other would read the same n now.
                reads[1].wait(timeout=0.5)
            conn.execute(table.update().values(n=n + 1))

    first = threading.Thread(target=increment, args=(0,))
    first.start()
    assert reads[0].wait(10)
    second = threading.Thread(target=increment, args=(1,))
    second.start()
    first.join()
    second.join()
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.n)).scalar_one() == 2
