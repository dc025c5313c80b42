"""The store behind ``/v1/batches``: batches and their requests, one row each, on the
storage layer (tuneserve.database: the ``TUNESERVE_DATABASE_URL`` database, else
``$TUNESERVE_HOME/batches/batches.sqlite`` as before the layer).

A request row turns ``done`` exactly once (``UPDATE … WHERE status = 'pending'``) in the
same statement that stores its response, so a server killed mid-batch resumes with exactly
the requests that have no stored answer: nothing is lost and nothing is answered twice.
``claim`` hands pending requests to one of several runners (one per replica; row locks
skipped by the others on PostgreSQL, the single writer lock on SQLite), each for a lease;
``start`` and ``begin_finalizing`` let exactly one runner validate and finalize a batch.
Calls are short and synchronous; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service.batches.input import BatchLine
from tuneserve.database import database_url, engine_for, sqlite_url, write_transaction
from tuneserve.database.tables import batch_requests, batches
from tuneserve.home import tuneserve_home

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
DEFAULT_LEASE_S = 300


def now() -> int:
    return int(time.time())


class BatchStore:
    """``BatchStore()`` opens the configured database; ``BatchStore(path)`` one SQLite file
    (a batches file from before the storage layer is adopted in place); ``url=`` any URL."""

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        if path is not None and url is not None:
            raise ValueError("BatchStore: give a path or a url, not both")
        if path is not None:
            url = sqlite_url(path)
        default = tuneserve_home() / "batches" / "batches.sqlite"
        self.url = url or database_url(default_sqlite=default)
        self._engine = engine_for(self.url)

    @staticmethod
    def _row(row: sa.RowMapping | None) -> dict[str, Any] | None:
        return dict(row) if row is not None else None

    # -- batches --------------------------------------------------------------------
    def add(self, *, batch_id: str, endpoint: str, input_file_id: str, completion_window: str,
            metadata: dict | None, expires_at: int, project: str = "default") -> dict[str, Any]:
        with self._engine.begin() as db:
            db.execute(batches.insert().values(
                id=batch_id, created_at=now(), endpoint=endpoint, input_file_id=input_file_id,
                completion_window=completion_window, status="validating", metadata=metadata,
                expires_at=expires_at, project=project,
            ))
        return self.get(batch_id)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as db:
            return self._row(db.execute(
                sa.select(batches).where(batches.c.id == batch_id)).mappings().first())

    def list(self) -> list[dict[str, Any]]:
        """Every batch, oldest first."""
        with self._engine.connect() as db:
            rows = db.execute(sa.select(batches).order_by(batches.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def next_active(self) -> dict[str, Any] | None:
        """The oldest batch that still has work (batches run one at a time, in order)."""
        query = (sa.select(batches).where(batches.c.status.in_(ACTIVE))
                 .order_by(batches.c.seq).limit(1))
        with self._engine.connect() as db:
            return self._row(db.execute(query).mappings().first())

    def set_status(self, batch_id: str, status: str, *, only_from: Iterable[str] | None = None,
                   **fields: Any) -> bool:
        """Move a batch to ``status`` (stamping ``<status>_at``); False when ``only_from`` is
        given and the batch is in none of those statuses."""
        values = {"status": status, f"{status}_at": now(), **fields}
        update = batches.update().where(batches.c.id == batch_id).values(values)
        if only_from is not None:
            update = update.where(batches.c.status.in_(tuple(only_from)))
        with self._engine.begin() as db:
            return db.execute(update).rowcount == 1

    # -- requests -------------------------------------------------------------------
    def start(self, batch_id: str, requests: list[BatchLine]) -> bool:
        """Store the batch's requests and mark it in progress, in one transaction (a
        restart during validation validates again from scratch). False, storing nothing,
        when the batch is no longer ``validating`` (another replica's runner started it:
        the row lock on PostgreSQL, the writer lock on SQLite, make that check exact)."""
        with write_transaction(self._engine) as db:
            status = db.execute(sa.select(batches.c.status).where(batches.c.id == batch_id)
                                .with_for_update()).scalar()
            if status != "validating":
                return False
            db.execute(batch_requests.delete().where(batch_requests.c.batch_id == batch_id))
            if requests:
                db.execute(batch_requests.insert(), [
                    {"batch_id": batch_id, "line": r.line, "custom_id": r.custom_id,
                     "url": r.url, "body": r.body} for r in requests])
            db.execute(batches.update()
                       .where(batches.c.id == batch_id, batches.c.status == "validating")
                       .values(status="in_progress", in_progress_at=now()))
        return True

    def begin_finalizing(self, batch_id: str, lease_s: int = DEFAULT_LEASE_S) -> bool:
        """Move an in-progress batch to ``finalizing``; True for the one runner (of all
        replicas) that did, which then writes the output. A batch left ``finalizing`` for
        ``lease_s`` (its finalizer died) may be taken over the same way."""
        c = batches.c
        t = now()
        claimable = sa.or_(c.status == "in_progress",
                           sa.and_(c.status == "finalizing", c.finalizing_at < t - lease_s))
        with self._engine.begin() as db:
            return db.execute(batches.update().where(c.id == batch_id, claimable)
                              .values(status="finalizing", finalizing_at=t)).rowcount == 1

    def _requests(self, batch_id: str, status: str) -> list[dict[str, Any]]:
        query = (sa.select(batch_requests)
                 .where(batch_requests.c.batch_id == batch_id, batch_requests.c.status == status)
                 .order_by(batch_requests.c.line))
        with self._engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    def pending(self, batch_id: str) -> list[dict[str, Any]]:
        return self._requests(batch_id, "pending")

    def claim(self, batch_id: str, owner: str, *, limit: int = 16,
              lease_s: int = DEFAULT_LEASE_S) -> list[dict[str, Any]]:
        """Up to ``limit`` pending requests (input order) that no other worker holds a live
        lease on, leased to ``owner`` for ``lease_s`` seconds; a worker that dies loses its
        lease, and ``owner`` itself (e.g. restarted under the same name) may claim again.

        Concurrent claimers never get the same request: on PostgreSQL the rows are locked
        ``FOR UPDATE SKIP LOCKED`` (another claimer takes the next free rows instead of
        waiting), on SQLite the claim is one write transaction holding the writer lock."""
        t = now()
        c = batch_requests.c
        query = (
            sa.select(batch_requests)
            .where(c.batch_id == batch_id, c.status == "pending",
                   sa.or_(c.lease_until.is_(None), c.lease_until < t, c.claimed_by == owner))
            .order_by(c.line)
            .limit(limit)
            # Rendered on PostgreSQL only (SQLite has no row locks: write_transaction).
            .with_for_update(skip_locked=True)
        )
        with write_transaction(self._engine) as db:
            rows = [dict(r) for r in db.execute(query).mappings()]
            if rows:
                db.execute(batch_requests.update()
                           .where(c.batch_id == batch_id, c.line.in_([r["line"] for r in rows]))
                           .values(claimed_by=owner, lease_until=t + lease_s))
        for row in rows:
            row.update(claimed_by=owner, lease_until=t + lease_s)
        return rows

    def finish_request(self, batch_id: str, line: int, status_code: int,
                       response: dict[str, Any]) -> bool:
        """Store one answer; False when the request was already answered."""
        c = batch_requests.c
        update = (batch_requests.update()
                  .where(c.batch_id == batch_id, c.line == line, c.status == "pending")
                  .values(status="done", status_code=status_code, response=response,
                          finished_at=now()))
        with self._engine.begin() as db:
            return db.execute(update).rowcount == 1

    def answered(self, batch_id: str) -> list[dict[str, Any]]:
        """Every answered request, in input order."""
        return self._requests(batch_id, "done")

    def counts(self, batch_id: str) -> dict[str, int]:
        c = batch_requests.c
        done = c.status == "done"

        def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        query = sa.select(sa.func.count(), count(done & (c.status_code == 200)),
                          count(done & (c.status_code != 200))).where(c.batch_id == batch_id)
        with self._engine.connect() as db:
            total, completed, failed = db.execute(query).one()
        return {"total": int(total), "completed": int(completed), "failed": int(failed)}
