"""Every evaluation run, stored on the storage layer (tuneserve.database), and regression checks.

The runs live in the shared database when ``TUNESERVE_DATABASE_URL`` is set (every replica
sees every run), else in ``$TUNESERVE_HOME/eval_history.sqlite`` as before this layer.

A run is one row: suite, models (labels, ids, adapter manifest hashes), per-model
metrics, time and the report folder. A new run is compared with the previous run of the
same suite, model label by model label: a metric that moved in its bad direction by more
than the suite's margin is a regression.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evaluation.suite import METRIC_DIRECTIONS
from tuneserve.database import database_url, engine_for, sqlite_url
from tuneserve.database.tables import eval_runs
from tuneserve.home import tuneserve_home

DB_NAME = "eval_history.sqlite"  # the embedded default, under $TUNESERVE_HOME


@dataclass(frozen=True)
class Regression:
    """One metric of one model that got worse than allowed."""

    model: str
    metric: str
    previous: float
    current: float
    margin: float

    def describe(self) -> str:
        return (
            f"{self.model}: {self.metric} {self.previous:.4g} -> {self.current:.4g} "
            f"(allowed drop {self.margin:g})"
        )


@dataclass(frozen=True)
class RunRow:
    id: int
    suite: str
    started_at: str
    models: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    report_dir: str | None
    regressed: bool


def find_regressions(
    previous: dict[str, dict[str, float]],
    current: dict[str, dict[str, float]],
    margins: dict[str, float],
) -> list[Regression]:
    """Metrics (per model label present in both runs) worse than ``previous`` by > margin."""
    found = []
    for label, now in current.items():
        before = previous.get(label)
        if not before:
            continue
        for metric, margin in margins.items():
            direction = METRIC_DIRECTIONS.get(metric, 0)
            if direction == 0 or metric not in now or metric not in before:
                continue
            worse_by = (before[metric] - now[metric]) * direction
            if worse_by > margin:
                found.append(Regression(label, metric, before[metric], now[metric], margin))
    return found


class History:
    """The run store.

    ``History()`` opens the configured database (``TUNESERVE_DATABASE_URL``, else
    ``$TUNESERVE_HOME/eval_history.sqlite``); ``History(path)`` one SQLite file, such as a
    history file from before the storage layer (adopted in place by the first migration);
    ``History(url=...)`` any supported database URL.
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        if path is not None and url is not None:
            raise ValueError("History: give a path or a url, not both")
        if path is not None:
            url = sqlite_url(path)
        self.url = url or database_url(default_sqlite=tuneserve_home() / DB_NAME)
        self._engine = engine_for(self.url)

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None on a database server."""
        url = self._engine.url
        return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None

    def add(self, record: dict[str, Any], report_dir: Path | None, regressed: bool) -> int:
        """Store a scored run record; returns its id."""
        with self._engine.begin() as db:
            result = db.execute(
                eval_runs.insert().values(
                    suite=record["suite"],
                    started_at=record["started_at"],
                    models=record["models"],
                    metrics=record["metrics"],
                    report_dir=str(report_dir) if report_dir else None,
                    regressed=regressed,
                )
            )
            return int(result.inserted_primary_key[0])

    def previous(self, suite: str) -> RunRow | None:
        """The latest stored run of ``suite``."""
        rows = self.runs(suite, limit=1)
        return rows[0] if rows else None

    def runs(self, suite: str | None = None, limit: int = 20) -> list[RunRow]:
        """Latest runs first, optionally of one suite."""
        query = sa.select(eval_runs).order_by(eval_runs.c.id.desc()).limit(limit)
        if suite:
            query = query.where(eval_runs.c.suite == suite)
        with self._engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [
            RunRow(
                id=r["id"],
                suite=r["suite"],
                started_at=r["started_at"],
                models=r["models"],
                metrics=r["metrics"],
                report_dir=r["report_dir"],
                regressed=bool(r["regressed"]),
            )
            for r in rows
        ]


def check_against_previous(
    history: History, record: dict[str, Any], margins: dict[str, float]
) -> dict[str, Any]:
    """Compare a scored record with the previous run of its suite; annotates and returns
    ``record["regression"] = {"previous_run_id", "regressions": [...]}``."""
    prev = history.previous(record["suite"])
    regressions = find_regressions(prev.metrics, record["metrics"], margins) if prev else []
    record["regression"] = {
        "previous_run_id": prev.id if prev else None,
        "previous_started_at": prev.started_at if prev else None,
        "margins": margins,
        "regressions": [asdict(r) | {"description": r.describe()} for r in regressions],
    }
    return record["regression"]
