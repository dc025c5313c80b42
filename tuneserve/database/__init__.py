"""The storage layer: one SQLAlchemy engine per database URL, its schema kept by Alembic.

``TUNESERVE_DATABASE_URL`` picks the database every store on this layer shares
(``postgresql://…`` for several replicas, mapped to the psycopg 3 driver). Unset, each store
keeps an embedded SQLite file under ``$TUNESERVE_HOME`` (the file it always used, so state
written before this layer is adopted in place): ``make run`` needs no database server.

The schema is the same on both backends: the Alembic migrations in ``migrations/`` run on
the first use of a URL in a process (``engine_for``), under a lock, so replicas that start
together migrate once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from tuneserve.errors import UserError

DATABASE_URL_ENV = "TUNESERVE_DATABASE_URL"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Wait this long for another writer's lock rather than fail at once (SQLite busy timeout;
# the stores' calls are short, a wait this long means something is stuck).
SQLITE_BUSY_TIMEOUT_S = 30.0
# pg_advisory_xact_lock key held while migrating: replicas starting together migrate once.
_MIGRATION_LOCK_KEY = 0x7475_6E65  # "tune"
_PG_DRIVER = "postgresql+psycopg"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class DatabaseURLError(UserError, ValueError):
    """``TUNESERVE_DATABASE_URL`` (or a URL given in code) names no supported database
    (a UserError: the CLI prints it as one line)."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def database_url(default_sqlite: Path) -> str:
    """The URL from ``TUNESERVE_DATABASE_URL``, else the embedded SQLite file ``default_sqlite``."""
    configured = os.environ.get(DATABASE_URL_ENV, "").strip()
    return normalize_url(configured) if configured else sqlite_url(default_sqlite)


def normalize_url(url: str | URL) -> str:
    """``postgresql://`` / ``postgres://`` become psycopg 3's driver; only SQLite and
    PostgreSQL (psycopg 3) are accepted, anything else is refused by name."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseURLError(f"{DATABASE_URL_ENV}: not a database URL ({exc})") from None
    if parsed.drivername in ("postgresql", "postgres", _PG_DRIVER):
        parsed = parsed.set(drivername=_PG_DRIVER)
    elif parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise DatabaseURLError(
            f"{DATABASE_URL_ENV}: unsupported database {parsed.drivername!r}; "
            "use postgresql://… (psycopg 3) or sqlite:///path"
        )
    return parsed.render_as_string(hide_password=False)


def engine_for(url: str) -> Engine:
    """The process's engine for ``url``, created and migrated to the newest schema on first use."""
    url = normalize_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url)
            migrate(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, and before a fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def create_engine(url: str) -> Engine:
    """A new engine (not migrated: ``engine_for`` is what stores call)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    # pool_pre_ping: a replica outlives a PostgreSQL restart or failover without errors on
    # the first query after it.
    return sa.create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # SQLAlchemy emits BEGIN itself (below): the sqlite3 module's own implicit
        # transactions would not cover DDL, nor let a writer take its lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (the UI, report pages) never block the writer and vice versa.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock at BEGIN (waiting up to the busy timeout)
        # instead of failing with SQLITE_BUSY when a read turns into a write mid-way.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it holds the one writer lock from its start
    (the single-writer equivalent of row locks), on PostgreSQL it is a plain transaction."""
    with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
        yield conn


def migrate(engine: Engine) -> None:
    """Upgrade ``engine``'s database to the newest schema (Alembic, no alembic.ini)."""
    for attempt in range(1, _SQLITE_MIGRATE_ATTEMPTS + 1):
        try:
            return _migrate_once(engine)
        except sa.exc.OperationalError as exc:
            # Processes opening a new SQLite file at once can get "database is locked"
            # without SQLite's busy handler ever waiting (seen under load in the test of
            # concurrent starts: the first connections race to switch the file to WAL).
            # The migration is one transaction: trying it again is safe.
            if (engine.dialect.name != "sqlite" or "locked" not in str(exc)
                    or attempt == _SQLITE_MIGRATE_ATTEMPTS):
                raise
            time.sleep(0.1 * attempt)


_SQLITE_MIGRATE_ATTEMPTS = 5


def _migrate_once(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
