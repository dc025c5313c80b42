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

# service/batches/store.py: batches and their requests, one row each.
# none_as_null: a Python None is SQL NULL (as before the layer), not the JSON text 'null'.
_JSON = sa.JSON(none_as_null=True)
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("input_file_id", sa.Text, nullable=False),
    sa.Column("completion_window", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("metadata", _JSON),
    sa.Column("errors", _JSON),
    sa.Column("output_file_id", sa.Text),
    sa.Column("error_file_id", sa.Text),
    *(
        sa.Column(f"{stamp}_at", sa.BigInteger)
        for stamp in ("in_progress", "expires", "finalizing", "completed", "failed",
                      "expired", "cancelling", "cancelled")
    ),
    sa.Column("project", sa.Text, nullable=False, server_default="default"),
    sqlite_autoincrement=True,
)
batch_requests = sa.Table(
    "batch_requests",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("custom_id", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", _JSON, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("status_code", sa.Integer),
    sa.Column("response", _JSON),
    sa.Column("finished_at", sa.BigInteger),
    # A claim (BatchStore.claim): who works on the request, until when (epoch seconds).
    sa.Column("claimed_by", sa.Text),
    sa.Column("lease_until", sa.BigInteger),
)
