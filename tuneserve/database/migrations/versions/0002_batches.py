"""Batches and their requests; adopts a batches file from before the storage layer.

Before this layer service/batches/store.py kept the same two tables in
``$TUNESERVE_HOME/batches/batches.sqlite``; on such a file they are kept (rows included)
and only the claim columns are added.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STAMPS = ("in_progress", "expires", "finalizing", "completed", "failed", "expired",
           "cancelling", "cancelled")


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if bind.dialect.name == "sqlite" and inspector.has_table("batch_requests"):
        with op.batch_alter_table("batch_requests") as table:
            table.add_column(sa.Column("claimed_by", sa.Text))
            table.add_column(sa.Column("lease_until", sa.BigInteger))
        return
    op.create_table(
        "batches",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("input_file_id", sa.Text, nullable=False),
        sa.Column("completion_window", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("metadata", _json()),
        sa.Column("errors", _json()),
        sa.Column("output_file_id", sa.Text),
        sa.Column("error_file_id", sa.Text),
        *(sa.Column(f"{stamp}_at", sa.BigInteger) for stamp in _STAMPS),
        sa.Column("project", sa.Text, nullable=False, server_default="default"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "batch_requests",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("custom_id", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", _json()),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("claimed_by", sa.Text),
        sa.Column("lease_until", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
