"""The tables of the stores on the storage layer (SQLAlchemy Core).

The migrations in ``migrations/versions`` create exactly these; tests/unit/test_database.py
checks that they agree on both backends.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# evaluation/history.py: one row per evaluation run.
eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("suite", sa.Text, nullable=False),
    sa.Column("started_at", sa.Text, nullable=False),  # ISO 8601, as the run record has it
    # JSON (not JSONB on PostgreSQL): keeps the key order the report shows.
    sa.Column("models", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("report_dir", sa.Text),
    sa.Column("regressed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("eval_runs_suite", "suite", "id"),
    # Ids are never reused after a delete (as the pre-layer SQLite table had it).
    sqlite_autoincrement=True,
)
