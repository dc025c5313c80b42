"""The store behind the Files and Fine-tuning APIs, on the storage layer (tuneserve.database).

Four tables: ``files`` (uploads' metadata; the payloads stay under ``files/``), ``jobs``,
``events``, ``checkpoints``. ``JobStore(root)`` keeps them in ``root/jobs.sqlite`` (the
file the store always used, adopted in place by migration 0003); ``url=`` puts them in any
database of the layer. The server opens ``JobStore(shared_dir()/"jobs", url=<the
TUNESERVE_DATABASE_URL database>)`` (``jobs_store`` in service/jobs/runtime.py): with
PostgreSQL and a shared folder every replica sees the same files and jobs, and the payloads
(``files/``) and job runs (``runs/``) it records by absolute path are readable from every
replica.
Rows come back as plain dicts. Jobs are handed to supervisors by ``claim_next``, a lease
that the claimer renews (``renew_lease``) and that guards its writes (``update_job(owner=)``).

The store is synchronous and a write may wait for another writer (the CLI, a second
service): keep it off the event loop. Async code goes through ``asyncio.to_thread`` at the
call site and HTTP handlers that only read or write the store are plain ``def`` routes,
which FastAPI runs in its thread pool. That was chosen over an async facade (a second API
per method to keep in step). Still on the loop: the post-training evaluator's few calls per
job (``verdict.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.ids import new_id
from tuneserve.database import engine_for, sqlite_url, write_transaction
from tuneserve.database.tables import files, job_checkpoints, job_events, jobs
from tuneserve.home import owner_replica

# A claimed job's lease: a worker renews it while the job runs (``renew_lease``); one that
# dies stops renewing and the job goes to the next claimer once the lease ran out.
DEFAULT_LEASE_S = 60

# The ``evaluation`` statuses still to be run (not done, skipped or failed).
OPEN_EVALUATION = ("pending", "running")


def now() -> int:
    return int(time.time())


class JobStore:
    """Persistence for uploaded files, jobs, their events and checkpoints."""

    def __init__(self, root: Path, *, url: str | None = None) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.runs_dir = self.root / "runs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite"
        self.url = url or sqlite_url(self.db_path)
        self._engine = engine_for(self.url)

    @staticmethod
    def _row(row: sa.RowMapping | None) -> dict[str, Any] | None:
        return dict(row) if row is not None else None

    def _all(self, query: sa.Select) -> list[dict[str, Any]]:
        with self._engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    def _first(self, query: sa.Select) -> dict[str, Any] | None:
        with self._engine.connect() as db:
            return self._row(db.execute(query).mappings().first())

    # ---- files ------------------------------------------------------------------------
    def add_file(self, *, file_id: str, filename: str, purpose: str, size: int, path: Path,
                 rows: int | None, project: str = "default") -> dict[str, Any]:
        next_seq = sa.select(sa.func.coalesce(sa.func.max(files.c.seq), 0) + 1).scalar_subquery()
        with write_transaction(self._engine) as db:
            db.execute(files.insert().values(
                id=file_id, filename=filename, purpose=purpose, bytes=size, created_at=now(),
                path=str(path), rows=rows, project=project, seq=next_seq))
        return self.get_file(file_id)  # type: ignore[return-value]

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self._first(sa.select(files).where(files.c.id == file_id, files.c.deleted == 0))

    def list_files(self, *, purpose: str | None = None,
                   project: str | None = None) -> list[dict[str, Any]]:
        """All live files (of ``project`` when given), oldest first."""
        query = sa.select(files).where(files.c.deleted == 0)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        if project is not None:
            query = query.where(files.c.project == project)
        return self._all(query.order_by(files.c.created_at, files.c.seq, files.c.id))

    def delete_file(self, file_id: str) -> bool:
        with self._engine.begin() as db:
            return db.execute(files.update().where(files.c.id == file_id, files.c.deleted == 0)
                              .values(deleted=1)).rowcount > 0

    # ---- jobs -------------------------------------------------------------------------
    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        with self._engine.begin() as db:
            db.execute(jobs.insert().values(**job))
        return self.get_job(job["id"])  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._first(sa.select(jobs).where(jobs.c.id == job_id))

    def list_jobs(self, *, after: str | None = None, limit: int = 20,
                  statuses: frozenset[str] | None = None,
                  project: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Jobs (of ``project`` when given) newest first (OpenAI order), starting after the
        job id ``after``.

        Returns (page, has_more).
        """
        query = sa.select(jobs)
        if after:
            query = query.where(
                jobs.c.seq < sa.select(jobs.c.seq).where(jobs.c.id == after).scalar_subquery())
        if statuses:
            query = query.where(jobs.c.status.in_(sorted(statuses)))
        if project is not None:
            query = query.where(jobs.c.project == project)
        rows = self._all(query.order_by(jobs.c.seq.desc()).limit(limit + 1))
        return rows[:limit], len(rows) > limit

    def claim_next(self, owner: str, lease_s: int = DEFAULT_LEASE_S) -> dict[str, Any] | None:
        """Hand the oldest claimable job to ``owner`` for ``lease_s`` seconds, marked
        ``running`` (``attempts`` + 1), and return it; None when there is none.

        Claimable: ``queued``, or ``running`` under a lease that ran out (its worker died:
        the new claimer resumes it from its newest checkpoint). Concurrent claimers never get
        the same job: on PostgreSQL the row is locked ``FOR UPDATE SKIP LOCKED`` (another
        claimer takes the next job instead of waiting), on SQLite the claim is one write
        transaction holding the writer lock. Jobs ``running`` with no lease at all belong to
        a supervisor's own restart recovery, not to claimers."""
        t = now()
        c = jobs.c
        expired = sa.and_(c.status == "running", c.lease_until.is_not(None), c.lease_until < t)
        query = (sa.select(jobs).where(sa.or_(c.status == "queued", expired))
                 .order_by(c.seq).limit(1)
                 # Rendered on PostgreSQL only (SQLite has no row locks: write_transaction).
                 .with_for_update(skip_locked=True))
        with write_transaction(self._engine) as db:
            row = db.execute(query).mappings().first()
            if row is None:
                return None
            values = {"status": "running", "attempts": row["attempts"] + 1,
                      "claimed_by": owner, "lease_until": t + lease_s}
            db.execute(jobs.update().where(c.seq == row["seq"]).values(values))
        # taken_over_from: the claimer whose lease ran out (None for a queued job).
        taken_over = row["claimed_by"] if row["status"] == "running" else None
        return {**dict(row), **values, "taken_over_from": taken_over}

    def renew_lease(self, job_id: str, owner: str, lease_s: int = DEFAULT_LEASE_S) -> bool:
        """Extend ``owner``'s lease on a running job; False when it holds none any more (its
        lease ran out and another claimer took the job: it must stop working on it)."""
        c = jobs.c
        with self._engine.begin() as db:
            return db.execute(jobs.update()
                              .where(c.id == job_id, c.claimed_by == owner,
                                     c.status == "running")
                              .values(lease_until=now() + lease_s)).rowcount == 1

    # ---- the post-training evaluation's claim -------------------------------------------
    # A succeeded job's ``evaluation`` (service/jobs/verdict.py) is a small queue of its own:
    # ``pending`` until a serving replica claims it; ``running`` under ``claim`` (owner and
    # lease end) while that replica renews it. Any replica may claim a pending one, or a
    # running one whose lease ran out (its replica died), so each runs once and none is lost.
    def evaluations_to_run(self) -> list[str]:
        """Ids of succeeded jobs whose evaluation is pending or running, oldest first."""
        state = jobs.c.evaluation["status"].as_string()
        query = (sa.select(jobs.c.id)
                 .where(jobs.c.status == "succeeded", state.in_(OPEN_EVALUATION))
                 .order_by(jobs.c.seq))
        return [row["id"] for row in self._all(query)]

    def claim_evaluation(self, job_id: str, owner: str, lease_s: int) -> bool:
        """Make ``owner`` the one evaluator of the job for ``lease_s`` seconds; False when
        it is not claimable: not pending, or running under another live claim. A claim of
        another process of ``owner``'s own replica is a dead predecessor's (one process per
        replica): taken at once, as the supervisor settles its predecessor's jobs."""
        t = now()

        def claim(evaluation: dict[str, Any]) -> dict[str, Any] | None:
            held = evaluation.get("claim") or {}
            free = evaluation.get("status") == "pending" or (
                evaluation.get("status") == "running"
                and (held.get("until", 0) < t
                     or (held.get("owner") != owner
                         and owner_replica(held.get("owner")) == owner_replica(owner))))
            return (dict(evaluation, status="running", claim={"owner": owner, "until": t + lease_s})
                    if free else None)

        return self._change_evaluation(job_id, claim, jobs.c.status == "succeeded")

    def renew_evaluation(self, job_id: str, owner: str, lease_s: int) -> bool:
        """Extend ``owner``'s claim while its evaluation runs; False only when another
        evaluator holds the job now (``owner``'s lease ran out: it must stop)."""
        lost = False

        def renew(evaluation: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal lost
            if evaluation.get("status") not in OPEN_EVALUATION:
                return None  # finished meanwhile: nothing to hold
            if (evaluation.get("claim") or {}).get("owner") != owner:
                lost = True
                return None
            return dict(evaluation, claim={"owner": owner, "until": now() + lease_s})

        self._change_evaluation(job_id, renew)
        return not lost

    def update_evaluation(self, job_id: str, **fields: Any) -> None:
        """Set fields of the job's ``evaluation``; a finished one (not pending or running)
        drops its claim."""
        def update(evaluation: dict[str, Any]) -> dict[str, Any]:
            evaluation = dict(evaluation, **fields)
            if evaluation.get("status") not in OPEN_EVALUATION:
                evaluation.pop("claim", None)
            return evaluation

        self._change_evaluation(job_id, update)

    def _change_evaluation(self, job_id: str,
                           change: Callable[[dict[str, Any]], dict[str, Any] | None],
                           *conditions: sa.ColumnElement[bool]) -> bool:
        """Read, change and write a job's ``evaluation`` as one locked step (a claim's
        renewal and the evaluator's writes must not undo each other), if the job meets
        ``conditions``; ``change`` returns None to write nothing. True when written."""
        with write_transaction(self._engine) as db:
            row = db.execute(sa.select(jobs.c.evaluation)
                             .where(jobs.c.id == job_id, *conditions)
                             .with_for_update()).first()
            if row is None:
                return False
            evaluation = change(dict(row.evaluation or {}))
            if evaluation is None:
                return False
            db.execute(jobs.update().where(jobs.c.id == job_id).values(evaluation=evaluation))
        return True

    def update_job(self, job_id: str, *, only_if_status: set[str] | None = None,
                   owner: str | None = None, **fields: Any) -> bool:
        """Set columns of a job; with ``only_if_status`` only while it has one of those
        statuses (so a cancel and a finishing worker cannot both win); with ``owner`` only
        while ``owner`` holds the job's claim (a supervisor whose lease was taken over
        writes nothing). True if updated."""
        update = jobs.update().where(jobs.c.id == job_id).values(**fields)
        if only_if_status:
            update = update.where(jobs.c.status.in_(sorted(only_if_status)))
        if owner is not None:
            update = update.where(jobs.c.claimed_by == owner)
        with self._engine.begin() as db:
            return db.execute(update).rowcount > 0

    # ---- events -----------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info",
                  type: str = "message", data: dict[str, Any] | None = None,
                  created_at: int | None = None) -> dict[str, Any]:
        event_id = new_id("ftevent")
        with self._engine.begin() as db:
            db.execute(job_events.insert().values(
                id=event_id, job_id=job_id, created_at=created_at or now(), level=level,
                message=message, type=type, data=data))
        return {"id": event_id}

    def latest_metrics_event(self, job_id: str) -> dict[str, Any] | None:
        e = job_events.c
        return self._first(sa.select(job_events).where(e.job_id == job_id, e.type == "metrics")
                           .order_by(e.seq.desc()).limit(1))

    def update_event(self, event_id: str, *, message: str, data: dict[str, Any]) -> None:
        with self._engine.begin() as db:
            db.execute(job_events.update().where(job_events.c.id == event_id)
                       .values(message=message, data=data))

    def list_events(self, job_id: str, *, after: str | None = None,
                    limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
        """A job's events newest first (as OpenAI lists them), after the event id ``after``."""
        return self._page_newest_first(job_events, job_id, after, limit)

    # ---- checkpoints ------------------------------------------------------------------
    def add_checkpoint(self, job_id: str, step: int, path: Path,
                       metrics: dict[str, Any]) -> bool:
        """Record a checkpoint once per (job, step); True when it is new."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(job_checkpoints).values(
            id=new_id("ftckpt"), job_id=job_id, created_at=now(), step_number=step,
            path=str(path), metrics=metrics,
        ).on_conflict_do_nothing(index_elements=["job_id", "step_number"])
        # RETURNING, not rowcount: psycopg reports no rowcount for an insert that returns
        # its generated key.
        with self._engine.begin() as db:
            return db.execute(insert.returning(job_checkpoints.c.id)).first() is not None

    def list_checkpoints(self, job_id: str, *, after: str | None = None,
                         limit: int = 10) -> tuple[list[dict[str, Any]], bool]:
        """A job's checkpoints newest first, after the checkpoint id ``after``."""
        return self._page_newest_first(job_checkpoints, job_id, after, limit)

    def _page_newest_first(self, table: sa.Table, job_id: str, after: str | None,
                           limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of a job's rows in ``table`` newest first, after the row id ``after``;
        plus whether more rows follow."""
        query = sa.select(table).where(table.c.job_id == job_id)
        if after:
            query = query.where(table.c.seq < sa.select(table.c.seq)
                                .where(table.c.id == after).scalar_subquery())
        rows = self._all(query.order_by(table.c.seq.desc()).limit(limit + 1))
        return rows[:limit], len(rows) > limit
