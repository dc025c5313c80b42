"""Aliases: stable model ids (e.g. ``docker-commands``) that point at one served adapter.

Clients call the alias; promotion moves it to a new adapter, rollback moves it back. Every
decision (a promotion, a refusal by the gate, a rollback, a delete) is appended to
``alias_decisions`` with who made it and the evidence, so "why does this name serve that
adapter?" always has an answer. Both tables are on the storage layer next to the adapter
rows (catalog.py), per base model: every replica reads the same aliases.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.errors import NotFound
from tuneserve.database import write_transaction
from tuneserve.database.tables import adapters, alias_decisions, aliases

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
    """Alias → adapter name of one base model, and the log of decisions."""

    def __init__(self, engine: Engine, base_model: str) -> None:
        self._engine = engine
        self.base_model = base_model
        # Every inference request resolves its model through target(): kept in memory, not
        # queried. record() updates it for this replica's decisions, refresh() (the
        # registry's sync) for other replicas'.
        self._targets: dict[str, str] = self.read()
        self._owners: dict[str, str | None] = self._read_owners()

    def read(self) -> dict[str, str]:
        """The aliases as the database has them now (synchronous)."""
        query = sa.select(aliases.c.name, aliases.c.adapter).where(
            aliases.c.base_model == self.base_model)
        with self._engine.connect() as db:
            return dict(db.execute(query).tuples().all())

    def _read_owners(self) -> dict[str, str | None]:
        query = sa.select(aliases.c.name, aliases.c.project).where(
            aliases.c.base_model == self.base_model)
        with self._engine.connect() as db:
            return dict(db.execute(query).tuples().all())

    def replace(self, targets: dict[str, str]) -> dict[str, str]:
        """Take ``targets`` (from ``read``) as the aliases; return the previous ones."""
        previous, self._targets = self._targets, dict(targets)
        self._owners = self._read_owners()
        return previous

    def all(self) -> dict[str, str]:
        return dict(sorted(self._targets.items()))

    def target(self, name: str) -> str | None:
        return self._targets.get(name)

    def owner(self, name: str) -> str | None:
        """The project that owns the alias; None: shared (an admin's) or no such alias."""
        return self._owners.get(name)

    def aliases_of(self, adapter: str) -> list[str]:
        return sorted(name for name, target in self._targets.items() if target == adapter)

    def record(self, alias: str, action: str, *, adapter: str | None, actor: str, reason: str,
               evidence: dict[str, Any] | None = None, project: str | None = None) -> Decision:
        """Append a decision and apply it in one transaction: promote/rollback point the
        alias at ``adapter`` (NotFound when no replica serves it any more), delete removes
        the alias, refused changes nothing. ``project``: the owner of an alias this creates
        (None: shared); a moved alias keeps its owner."""
        if action not in ACTIONS:
            raise ValueError(f"unknown alias action {action!r}")
        try:
            return self._record(alias, action, adapter, actor, reason, evidence, project)
        except sa.exc.IntegrityError:
            # Two replicas created the same new alias at once (PostgreSQL: both saw no row);
            # the loser retries and finds the winner's alias as its previous target.
            return self._record(alias, action, adapter, actor, reason, evidence, project)

    def _record(self, alias: str, action: str, adapter: str | None, actor: str, reason: str,
                evidence: dict[str, Any] | None, project: str | None) -> Decision:
        mine = aliases.c.base_model == self.base_model
        created = int(time.time())
        with write_transaction(self._engine) as db:
            if action in ("promote", "rollback"):
                # Locks the adapter's row: a removal on another replica waits, then sees
                # this alias (catalog.AdapterCatalog.delete).
                served = db.execute(sa.select(adapters.c.name).where(
                    adapters.c.base_model == self.base_model, adapters.c.name == adapter)
                    .with_for_update()).first()
                if served is None:
                    raise NotFound(f"no adapter named {adapter!r} is served", param="adapter",
                                   code="adapter_not_found")
            # The previous target as the database has it (another replica may have moved it).
            row = db.execute(sa.select(aliases.c.adapter, aliases.c.project).where(
                mine, aliases.c.name == alias).with_for_update()).first()
            previous, owner = (row.adapter, row.project) if row is not None else (None, project)
            if action in ("promote", "rollback"):
                if previous is None:
                    db.execute(aliases.insert().values(base_model=self.base_model, name=alias,
                                                       adapter=adapter, updated=created,
                                                       project=owner))
                else:
                    db.execute(aliases.update().where(mine, aliases.c.name == alias)
                               .values(adapter=adapter, updated=created))
            elif action == "delete":
                db.execute(aliases.delete().where(mine, aliases.c.name == alias))
            seq = db.execute(alias_decisions.insert().values(
                base_model=self.base_model, alias=alias, action=action, adapter=adapter,
                previous=previous, actor=actor, reason=reason, evidence=evidence,
                created=created)).inserted_primary_key[0]
        if action in ("promote", "rollback"):
            self._targets[alias] = adapter  # type: ignore[assignment]
            self._owners[alias] = owner
        elif action == "delete":
            self._targets.pop(alias, None)
            self._owners.pop(alias, None)
        return Decision(seq, alias, action, adapter, previous, actor, reason, evidence, created)

    def decisions(self, alias: str) -> list[Decision]:
        """The alias's decisions, newest first."""
        d = alias_decisions.c
        query = (sa.select(d.seq, d.alias, d.action, d.adapter, d.previous, d.actor, d.reason,
                           d.evidence, d.created)
                 .where(d.base_model == self.base_model, d.alias == alias)
                 .order_by(d.seq.desc()))
        with self._engine.connect() as db:
            return [Decision(*row) for row in db.execute(query).tuples()]

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
