"""One short SQLite transaction per call, shared by the SQLite stores (jobs, batches)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def transaction(path: Path, busy_timeout_s: float) -> Iterator[sqlite3.Connection]:
    """A connection with dict-like rows that commits on success, rolls back on error and
    is closed after; waits up to ``busy_timeout_s`` for another writer's lock."""
    db = sqlite3.connect(path, timeout=busy_timeout_s)
    db.row_factory = sqlite3.Row
    try:
        with db:
            yield db
    finally:
        db.close()
