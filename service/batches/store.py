"""The SQLite store behind ``/v1/batches``: batches and their requests, one row each.

A request row turns ``done`` exactly once (``UPDATE … WHERE status = 'pending'``) in the
same statement that stores its response, so a server killed mid-batch resumes with exactly
the requests that have no stored answer: nothing is lost and nothing is answered twice.
Calls are short and synchronous; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.batches.input import BatchLine
from service.sqlite import transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    in_progress_at INTEGER,
    expires_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    project TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE IF NOT EXISTS batch_requests (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    status_code INTEGER,
    response TEXT,
    finished_at INTEGER,
    PRIMARY KEY (batch_id, line)
);
"""
_JSON_COLUMNS = ("metadata", "errors", "body", "response")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_BUSY_TIMEOUT_S = 30.0  # as the jobs store: wait for another writer, never fail at once


def now() -> int:
    return int(time.time())


class BatchStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with transaction(self.path, _BUSY_TIMEOUT_S) as db:
            yield db

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for column in _JSON_COLUMNS:
            if out.get(column) is not None:
                out[column] = json.loads(out[column])
        return out

    # -- batches --------------------------------------------------------------------
    def add(self, *, batch_id: str, endpoint: str, input_file_id: str, completion_window: str,
            metadata: dict | None, expires_at: int, project: str = "default") -> dict[str, Any]:
        with self._connect() as db:
            db.execute(
                "INSERT INTO batches (id, created_at, endpoint, input_file_id, "
                "completion_window, status, metadata, expires_at, project) "
                "VALUES (?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                (batch_id, now(), endpoint, input_file_id, completion_window,
                 json.dumps(metadata) if metadata is not None else None, expires_at, project),
            )
        return self.get(batch_id)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            return self._row(db.execute("SELECT * FROM batches WHERE id = ?",
                                        (batch_id,)).fetchone())

    def list(self) -> list[dict[str, Any]]:
        """Every batch, oldest first."""
        with self._connect() as db:
            return [self._row(r) for r in db.execute("SELECT * FROM batches ORDER BY seq")]

    def next_active(self) -> dict[str, Any] | None:
        """The oldest batch that still has work (batches run one at a time, in order)."""
        marks = ",".join("?" * len(ACTIVE))
        with self._connect() as db:
            return self._row(db.execute(
                f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq LIMIT 1", ACTIVE,
            ).fetchone())

    def set_status(self, batch_id: str, status: str, *, only_from: Iterable[str] | None = None,
                   **fields: Any) -> bool:
        """Move a batch to ``status`` (stamping ``<status>_at``); False when ``only_from`` is
        given and the batch is in none of those statuses."""
        values = {"status": status, f"{status}_at": now(), **fields}
        values = {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v
                  for k, v in values.items()}
        sql = f"UPDATE batches SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?"
        args: list[Any] = [*values.values(), batch_id]
        if only_from is not None:
            allowed = tuple(only_from)
            sql += f" AND status IN ({','.join('?' * len(allowed))})"
            args += allowed
        with self._connect() as db:
            return db.execute(sql, args).rowcount == 1

    # -- requests -------------------------------------------------------------------
    def start(self, batch_id: str, requests: list[BatchLine]) -> None:
        """Store the batch's requests and mark it in progress, in one transaction (a
        restart during validation validates again from scratch)."""
        with self._connect() as db:
            db.execute("DELETE FROM batch_requests WHERE batch_id = ?", (batch_id,))
            db.executemany(
                "INSERT INTO batch_requests (batch_id, line, custom_id, url, body) "
                "VALUES (?, ?, ?, ?, ?)",
                [(batch_id, r.line, r.custom_id, r.url, json.dumps(r.body)) for r in requests],
            )
            db.execute("UPDATE batches SET status = 'in_progress', in_progress_at = ? "
                       "WHERE id = ? AND status = 'validating'", (now(), batch_id))

    def pending(self, batch_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [self._row(r) for r in db.execute(
                "SELECT * FROM batch_requests WHERE batch_id = ? AND status = 'pending' "
                "ORDER BY line", (batch_id,))]

    def finish_request(self, batch_id: str, line: int, status_code: int,
                       response: dict[str, Any]) -> bool:
        """Store one answer; False when the request was already answered."""
        with self._connect() as db:
            return db.execute(
                "UPDATE batch_requests SET status = 'done', status_code = ?, response = ?, "
                "finished_at = ? WHERE batch_id = ? AND line = ? AND status = 'pending'",
                (status_code, json.dumps(response), now(), batch_id, line),
            ).rowcount == 1

    def answered(self, batch_id: str) -> list[dict[str, Any]]:
        """Every answered request, in input order."""
        with self._connect() as db:
            return [self._row(r) for r in db.execute(
                "SELECT * FROM batch_requests WHERE batch_id = ? AND status = 'done' "
                "ORDER BY line", (batch_id,))]

    def counts(self, batch_id: str) -> dict[str, int]:
        with self._connect() as db:
            total, completed, failed = db.execute(
                "SELECT COUNT(*), "
                "COALESCE(SUM(status = 'done' AND status_code = 200), 0), "
                "COALESCE(SUM(status = 'done' AND status_code != 200), 0) "
                "FROM batch_requests WHERE batch_id = ?", (batch_id,)).fetchone()
        return {"total": total, "completed": completed, "failed": failed}
