"""Evaluation history (eval_runs); adopts a history file from before the storage layer.

Before this layer, evaluation/history.py kept a ``runs`` table in
``$TUNESERVE_HOME/eval_history.sqlite``. On such a file this migration renames the table in
place (rows and ids kept) instead of creating it, so existing history keeps working.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if bind.dialect.name == "sqlite" and inspector.has_table("runs"):
        # Same columns, same types on SQLite (JSON and BOOLEAN are TEXT and INTEGER there).
        op.drop_index("runs_suite", table_name="runs", if_exists=True)
        op.rename_table("runs", "eval_runs")
    else:
        op.create_table(
            "eval_runs",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("suite", sa.Text, nullable=False),
            sa.Column("started_at", sa.Text, nullable=False),
            sa.Column("models", sa.JSON, nullable=False),
            sa.Column("metrics", sa.JSON, nullable=False),
            sa.Column("report_dir", sa.Text),
            sa.Column("regressed", sa.Boolean, nullable=False, server_default=sa.false()),
            sqlite_autoincrement=True,
        )
    op.create_index("eval_runs_suite", "eval_runs", ["suite", "id"])


def downgrade() -> None:
    op.drop_table("eval_runs")
