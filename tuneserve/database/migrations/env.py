"""Alembic environment: runs on the connection ``tuneserve.database.migrate`` passes in
(already in a transaction, holding the migration lock), never from an alembic.ini URL."""

from __future__ import annotations

from alembic import context

from tuneserve.database.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
