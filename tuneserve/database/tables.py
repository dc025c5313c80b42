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

# service/jobs/store.py: uploaded files' metadata, fine-tuning jobs, their events and
# checkpoints. Flags stay INTEGER 0/1 and JSON stays TEXT on SQLite, as in the jobs file
# from before the layer (adopted in place by migration 0003).
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer),
    sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("project", sa.Text, nullable=False, server_default="default"),
    # Upload order within one second (the old file ordered by SQLite's rowid).
    sa.Column("seq", sa.BigInteger),
)
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("training_file", sa.Text, nullable=False),
    sa.Column("validation_file", sa.Text),
    sa.Column("suffix", sa.Text),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("hyperparameters", _JSON, nullable=False),
    sa.Column("method", _JSON, nullable=False),
    sa.Column("metadata", _JSON),
    sa.Column("train_config", _JSON, nullable=False),
    sa.Column("fine_tuned_model", sa.Text),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("error", _JSON),
    sa.Column("pid", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("adapter_path", sa.Text),
    sa.Column("log_offset", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("result_files", _JSON),
    sa.Column("evaluation", _JSON),
    sa.Column("project", sa.Text, nullable=False, server_default="default"),
    # A claim (JobStore.claim_next): which worker runs the job, until when (epoch seconds).
    sa.Column("claimed_by", sa.Text),
    sa.Column("lease_until", sa.BigInteger),
    sqlite_autoincrement=True,
)
job_events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", _JSON),
    sa.Index("events_job", "job_id", "seq"),
    sqlite_autoincrement=True,
)
job_checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("step_number", sa.Integer, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("metrics", _JSON, nullable=False),
    sa.UniqueConstraint("job_id", "step_number"),
    sqlite_autoincrement=True,
)

# service/adapters/catalog.py: the adapters every replica serves, aliases and the log of
# alias decisions, per base model (one database may hold several bases' registries).
# Flags stay INTEGER 0/1 and JSON stays TEXT on SQLite, as in the per-base registry file
# from before the layer (adopted in place by migration 0004).
adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("base_model", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("alpha", sa.Float),
    sa.Column("target_modules", _JSON, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("manifest", _JSON),
    # 1: the registry created the folder (an upload, a published job) and deletes it.
    sa.Column("owned_path", sa.Integer, nullable=False, server_default="0"),
    sa.Column("project", sa.Text, nullable=False, server_default="default"),
    sa.Column("shared", sa.Integer, nullable=False, server_default="1"),
)
aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("base_model", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("adapter", sa.Text, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
    # The owning project; NULL: shared (an admin's alias, or one from before projects).
    sa.Column("project", sa.Text),
)
alias_decisions = sa.Table(
    "alias_decisions",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("base_model", sa.Text, nullable=False, server_default=""),
    sa.Column("alias", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("adapter", sa.Text),
    sa.Column("previous", sa.Text),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", _JSON),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Index("alias_decisions_alias", "base_model", "alias", "seq"),
    sqlite_autoincrement=True,
)
