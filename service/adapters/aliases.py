"""Aliases: stable model ids (e.g. ``docker-commands``) that point at one served adapter.

Clients call the alias; promotion moves it to a new adapter, rollback moves it back. Every
decision (a promotion, a refusal by the gate, a rollback, a delete) is appended to
``alias_decisions`` with who made it and the evidence, so "why does this name serve that
adapter?" always has an answer. Kept in the registry's SQLite file (one per served base).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    adapter TEXT NOT NULL,
    updated INTEGER NOT NULL,
    project TEXT
);
CREATE TABLE IF NOT EXISTS alias_decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT NOT NULL,
    action TEXT NOT NULL,
    adapter TEXT,
    previous TEXT,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alias_decisions_alias ON alias_decisions(alias, seq);
"""

# What a decision did: moved the alias (promote, rollback), removed it, or left it (refused).
ACTIONS = ("promote", "rollback", "refused", "delete")


@dataclass(frozen=True)
class Decision:
    seq: int
    alias: str
    action: str
    adapter: str | None
    previous: str | None
    actor: str
    reason: str
    evidence: dict[str, Any] | None
    created: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AliasTable:
    """Alias → adapter name, and the log of decisions, on the registry's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)
        # The owning project (NULL: shared, an admin's) came later; older aliases stay shared.
        if "project" not in {r[1] for r in self._db.execute("PRAGMA table_info(aliases)")}:
            self._db.execute("ALTER TABLE aliases ADD COLUMN project TEXT")
        self._db.commit()
        # Every inference request resolves its model through target(): kept in memory, not
        # queried; record() is the only writer (one server process owns a registry file).
        self._targets: dict[str, str] = dict(
            self._db.execute("SELECT name, adapter FROM aliases ORDER BY name"))
        self._owners: dict[str, str | None] = dict(
            self._db.execute("SELECT name, project FROM aliases"))

    def all(self) -> dict[str, str]:
        return dict(sorted(self._targets.items()))

    def target(self, name: str) -> str | None:
        return self._targets.get(name)

    def owner(self, name: str) -> str | None:
        """The project that owns the alias; None: shared (or no such alias)."""
        return self._owners.get(name)

    def aliases_of(self, adapter: str) -> list[str]:
        return sorted(name for name, target in self._targets.items() if target == adapter)

    def record(self, alias: str, action: str, *, adapter: str | None, actor: str, reason: str,
               evidence: dict[str, Any] | None = None, project: str | None = None) -> Decision:
        """Append a decision and apply it in one transaction: promote/rollback point the
        alias at ``adapter``, delete removes the alias, refused changes nothing. ``project``:
        the owner of an alias this creates (None: shared); a moved alias keeps its owner."""
        if action not in ACTIONS:
            raise ValueError(f"unknown alias action {action!r}")
        previous = self.target(alias)
        owner = self._owners.get(alias) if previous is not None else project
        created = int(time.time())
        with self._db:
            if action in ("promote", "rollback"):
                self._db.execute("INSERT OR REPLACE INTO aliases (name, adapter, updated, "
                                 "project) VALUES (?, ?, ?, ?)", (alias, adapter, created, owner))
            elif action == "delete":
                self._db.execute("DELETE FROM aliases WHERE name = ?", (alias,))
            cur = self._db.execute(
                "INSERT INTO alias_decisions (alias, action, adapter, previous, actor, reason,"
                " evidence, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (alias, action, adapter, previous, actor, reason,
                 json.dumps(evidence) if evidence is not None else None, created),
            )
        if action in ("promote", "rollback"):
            self._targets[alias] = adapter  # type: ignore[assignment]
            self._owners[alias] = owner
        elif action == "delete":
            self._targets.pop(alias, None)
            self._owners.pop(alias, None)
        return Decision(int(cur.lastrowid or 0), alias, action, adapter, previous, actor,
                        reason, evidence, created)

    def decisions(self, alias: str) -> list[Decision]:
        """The alias's decisions, newest first."""
        rows = self._db.execute(
            "SELECT seq, alias, action, adapter, previous, actor, reason, evidence, created"
            " FROM alias_decisions WHERE alias = ? ORDER BY seq DESC", (alias,))
        return [Decision(*r[:7], json.loads(r[7]) if r[7] else None, r[8]) for r in rows]

    def rollback_target(self, alias: str) -> str | None:
        """What the alias served before its newest promotion not yet rolled back (a stack:
        two rollbacks undo two promotions); None when there is nothing to go back to."""
        undone = 0
        for decision in self.decisions(alias):
            if decision.action == "delete":
                break
            if decision.action == "rollback":
                undone += 1
            elif decision.action == "promote":
                if undone:
                    undone -= 1
                    continue
                return decision.previous
        return None
