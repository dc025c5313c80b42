"""Adapters, aliases and alias decisions, per base model; adopts a registry file from
before the storage layer.

Before this layer service/adapters/registry.py kept the same three tables in
``$TUNESERVE_HOME/registry/<base>.sqlite``, one file per served base. On such a file they
are kept with their rows (and the adapters' primary key stays ``name``: one base per
file); the columns later releases added are added (``project`` = 'default' and ``shared`` =
1 for adapters from before projects), and aliases and decisions get ``base_model`` = ''
(the file never said which base it served: the registry that opens its file claims those
rows, see AdapterCatalog.claim_unlabelled).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def _add_missing(inspector: sa.Inspector, table: str, columns: list[sa.Column]) -> None:
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateColumn

    have = {c["name"] for c in inspector.get_columns(table)}
    for column in columns:
        if column.name not in have:
            # Plain ALTER TABLE ADD COLUMN: rows stay where they are.
            ddl = CreateColumn(column).compile(dialect=sqlite.dialect())
            op.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {ddl}"))


def _create_adapters() -> None:
    op.create_table(
        "adapters",
        sa.Column("base_model", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("alpha", sa.Float),
        sa.Column("target_modules", _json(), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("manifest", _json()),
        sa.Column("owned_path", sa.Integer, nullable=False, server_default="0"),
        sa.Column("project", sa.Text, nullable=False, server_default="default"),
        sa.Column("shared", sa.Integer, nullable=False, server_default="1"),
    )


def _create_aliases() -> None:
    op.create_table(
        "aliases",
        sa.Column("base_model", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("adapter", sa.Text, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.Column("project", sa.Text),
    )


def _create_decisions() -> None:
    op.create_table(
        "alias_decisions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("base_model", sa.Text, nullable=False, server_default=""),
        sa.Column("alias", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("adapter", sa.Text),
        sa.Column("previous", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", _json()),
        sa.Column("created", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    adopt = bind.dialect.name == "sqlite"
    if adopt and inspector.has_table("adapters"):
        _add_missing(inspector, "adapters", [
            sa.Column("project", sa.Text, nullable=False, server_default="default"),
            sa.Column("shared", sa.Integer, nullable=False, server_default="1")])
    else:
        _create_adapters()
    if adopt and inspector.has_table("aliases"):
        _add_missing(inspector, "aliases", [
            sa.Column("base_model", sa.Text, nullable=False, server_default=""),
            sa.Column("project", sa.Text)])  # older aliases stay shared
    else:
        _create_aliases()
    if adopt and inspector.has_table("alias_decisions"):
        _add_missing(inspector, "alias_decisions", [
            sa.Column("base_model", sa.Text, nullable=False, server_default="")])
        op.drop_index("alias_decisions_alias", table_name="alias_decisions", if_exists=True)
    else:
        _create_decisions()
    op.create_index("alias_decisions_alias", "alias_decisions", ["base_model", "alias", "seq"])


def downgrade() -> None:
    for table in ("alias_decisions", "aliases", "adapters"):
        op.drop_table(table)
