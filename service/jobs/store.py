"""The SQLite store behind the Files and Fine-tuning APIs.

One database file under ``$TUNESERVE_HOME/jobs/jobs.sqlite`` in WAL mode (readers never block
the supervisor's writes), four tables: ``files``, ``jobs``, ``events``, ``checkpoints``.
Every call opens its own short-lived connection, so the store is safe to share between
threads and the CLI; rows come back as plain dicts.

The store is synchronous and a call may wait up to ``_BUSY_TIMEOUT_S`` for another writer
(the CLI, a second service): keep it off the event loop. Async code goes through
``asyncio.to_thread`` at the call site and HTTP handlers that only read or write the store
are plain ``def`` routes, which FastAPI runs in its thread pool. That was chosen over an
async facade (a second API per method to keep in step) and over one connection per thread
(opening a connection costs microseconds; the wait on a lock is what blocked the loop).
Still on the loop: the post-training evaluator's few calls per job (``verdict.py``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.ids import new_id
from service.sqlite import transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    path TEXT NOT NULL,
    rows INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    project TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    method TEXT NOT NULL,
    metadata TEXT,
    train_config TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    error TEXT,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    adapter_path TEXT,
    log_offset INTEGER NOT NULL DEFAULT 0,
    result_files TEXT,
    evaluation TEXT,
    project TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step_number INTEGER NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    UNIQUE(job_id, step_number)
);
"""

# How long a call waits for another connection's write lock before it fails.
_BUSY_TIMEOUT_S = 30

_JSON_COLUMNS = ("hyperparameters", "method", "metadata", "train_config", "error", "data", "metrics",
                 "result_files", "evaluation")
# Columns added after the first release: a database made before them gets them on open
# (rows made before ``project`` existed belong to the default project).
_ADDED_COLUMNS = {
    "jobs": {"result_files": "TEXT", "evaluation": "TEXT",
             "project": "TEXT NOT NULL DEFAULT 'default'"},
    "files": {"project": "TEXT NOT NULL DEFAULT 'default'"},
}


def now() -> int:
    return int(time.time())


class JobStore:
    """Persistence for uploaded files, jobs, their events and checkpoints."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.runs_dir = self.root / "runs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with transaction(self.db_path, _BUSY_TIMEOUT_S) as db:
            yield db

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for key in _JSON_COLUMNS:
            if key in out and out[key] is not None:
                out[key] = json.loads(out[key])
        return out

    # ---- files ------------------------------------------------------------------------
    def add_file(self, *, file_id: str, filename: str, purpose: str, size: int, path: Path,
                 rows: int | None, project: str = "default") -> dict[str, Any]:
        with self._connect() as db:
            db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, path, rows, project)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, filename, purpose, size, now(), str(path), rows, project),
            )
        return self.get_file(file_id)  # type: ignore[return-value]

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,))
            return self._row(row.fetchone())

    def list_files(self, *, purpose: str | None = None,
                   project: str | None = None) -> list[dict[str, Any]]:
        """All live files (of ``project`` when given), oldest first."""
        query = "SELECT * FROM files WHERE deleted = 0"
        params: list[str] = []
        if purpose:
            query += " AND purpose = ?"
            params.append(purpose)
        if project is not None:
            query += " AND project = ?"
            params.append(project)
        with self._connect() as db:
            return [self._row(r) for r in db.execute(query + " ORDER BY created_at, rowid", params)]

    def delete_file(self, file_id: str) -> bool:
        with self._connect() as db:
            cur = db.execute("UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0", (file_id,))
            return cur.rowcount > 0

    # ---- jobs -------------------------------------------------------------------------
    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        record = dict(job)
        for key in _JSON_COLUMNS:
            if key in record and record[key] is not None:
                record[key] = json.dumps(record[key])
        cols = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self._connect() as db:
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(record.values()))
        return self.get_job(job["id"])  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list_jobs(self, *, after: str | None = None, limit: int = 20,
                  statuses: frozenset[str] | None = None,
                  project: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Jobs (of ``project`` when given) newest first (OpenAI order), starting after the
        job id ``after``.

        Returns (page, has_more).
        """
        query, params = "SELECT * FROM jobs WHERE 1=1", []
        if after:
            query += " AND seq < (SELECT seq FROM jobs WHERE id = ?)"
            params.append(after)
        if statuses:
            query += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(sorted(statuses))
        if project is not None:
            query += " AND project = ?"
            params.append(project)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        with self._connect() as db:
            rows = [self._row(r) for r in db.execute(query, params)]
        return rows[:limit], len(rows) > limit

    def next_queued(self) -> dict[str, Any] | None:
        """The oldest queued job (FIFO)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1")
            return self._row(row.fetchone())

    def update_job(self, job_id: str, *, only_if_status: set[str] | None = None,
                   **fields: Any) -> bool:
        """Set columns of a job; with ``only_if_status`` only while it has one of those
        statuses (so a cancel and a finishing worker cannot both win). True if updated."""
        for key in _JSON_COLUMNS:
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        query = f"UPDATE jobs SET {sets} WHERE id = ?"
        params = [*fields.values(), job_id]
        if only_if_status:
            query += f" AND status IN ({', '.join('?' for _ in only_if_status)})"
            params.extend(sorted(only_if_status))
        with self._connect() as db:
            return db.execute(query, params).rowcount > 0

    # ---- events -----------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info",
                  type: str = "message", data: dict[str, Any] | None = None,
                  created_at: int | None = None) -> dict[str, Any]:
        event_id = new_id("ftevent")
        with self._connect() as db:
            db.execute(
                "INSERT INTO events (id, job_id, created_at, level, message, type, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, job_id, created_at or now(), level, message, type,
                 json.dumps(data) if data is not None else None),
            )
        return {"id": event_id}

    def latest_metrics_event(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            return self._row(db.execute(
                "SELECT * FROM events WHERE job_id = ? AND type = 'metrics'"
                " ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone())

    def update_event(self, event_id: str, *, message: str, data: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("UPDATE events SET message = ?, data = ? WHERE id = ?",
                       (message, json.dumps(data), event_id))

    def list_events(self, job_id: str, *, after: str | None = None,
                    limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
        """A job's events newest first (as OpenAI lists them), after the event id ``after``."""
        return self._page_newest_first("events", job_id, after, limit)

    # ---- checkpoints ------------------------------------------------------------------
    def add_checkpoint(self, job_id: str, step: int, path: Path,
                       metrics: dict[str, Any]) -> bool:
        """Record a checkpoint once per (job, step); True when it is new."""
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step_number, path,"
                " metrics) VALUES (?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt"), job_id, now(), step, str(path), json.dumps(metrics)),
            )
            return cur.rowcount > 0

    def list_checkpoints(self, job_id: str, *, after: str | None = None,
                         limit: int = 10) -> tuple[list[dict[str, Any]], bool]:
        """A job's checkpoints newest first, after the checkpoint id ``after``."""
        return self._page_newest_first("checkpoints", job_id, after, limit)

    def _page_newest_first(self, table: str, job_id: str, after: str | None,
                           limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of a job's rows in ``table`` (a fixed name, never user input), newest
        first, after the row id ``after``; plus whether more rows follow."""
        query, params = f"SELECT * FROM {table} WHERE job_id = ?", [job_id]
        if after:
            query += f" AND seq < (SELECT seq FROM {table} WHERE id = ?)"
            params.append(after)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        with self._connect() as db:
            rows = [self._row(r) for r in db.execute(query, params)]
        return rows[:limit], len(rows) > limit
