"""Files metadata, jobs, their events and checkpoints; adopts a jobs file from before the
storage layer.

Before this layer service/jobs/store.py kept the same four tables in
``$TUNESERVE_HOME/jobs/jobs.sqlite``. On such a file they are kept with their rows; the
columns later releases added are added (``project`` = 'default' for older rows), and so are
the claim columns and the files' upload order (from SQLite's rowid).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def _adopt_sqlite(inspector: sa.Inspector) -> None:
    added = {
        "files": [sa.Column("project", sa.Text, nullable=False, server_default="default"),
                  sa.Column("seq", sa.BigInteger)],
        "jobs": [sa.Column("result_files", _json()), sa.Column("evaluation", _json()),
                 sa.Column("project", sa.Text, nullable=False, server_default="default"),
                 sa.Column("claimed_by", sa.Text), sa.Column("lease_until", sa.BigInteger)],
    }
    for table, columns in added.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.name not in have:
                # Plain ALTER TABLE ADD COLUMN: rows stay where they are.
                op.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN "
                                   f"{_column_ddl(column)}"))
    op.execute(sa.text("UPDATE files SET seq = rowid WHERE seq IS NULL"))


def _column_ddl(column: sa.Column) -> str:
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateColumn

    return str(CreateColumn(column).compile(dialect=sqlite.dialect()))


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if bind.dialect.name == "sqlite" and inspector.has_table("jobs"):
        _adopt_sqlite(inspector)
        return
    op.create_table(
        "files",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer),
        sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("project", sa.Text, nullable=False, server_default="default"),
        sa.Column("seq", sa.BigInteger),
    )
    op.create_table(
        "jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("training_file", sa.Text, nullable=False),
        sa.Column("validation_file", sa.Text),
        sa.Column("suffix", sa.Text),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("hyperparameters", _json(), nullable=False),
        sa.Column("method", _json(), nullable=False),
        sa.Column("metadata", _json()),
        sa.Column("train_config", _json(), nullable=False),
        sa.Column("fine_tuned_model", sa.Text),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("trained_tokens", sa.BigInteger),
        sa.Column("error", _json()),
        sa.Column("pid", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("adapter_path", sa.Text),
        sa.Column("log_offset", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("result_files", _json()),
        sa.Column("evaluation", _json()),
        sa.Column("project", sa.Text, nullable=False, server_default="default"),
        sa.Column("claimed_by", sa.Text),
        sa.Column("lease_until", sa.BigInteger),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("level", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("data", _json()),
        sqlite_autoincrement=True,
    )
    op.create_index("events_job", "events", ["job_id", "seq"])
    op.create_table(
        "checkpoints",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("step_number", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.UniqueConstraint("job_id", "step_number"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    for table in ("checkpoints", "events", "jobs", "files"):
        op.drop_table(table)
