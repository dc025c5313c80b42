"""Every evaluation run, stored in SQLite under ``$TUNESERVE_HOME``, and regression checks.

A run is one row: suite, models (labels, ids, adapter manifest hashes), per-model
metrics, time and the report folder. A new run is compared with the previous run of the
same suite, model label by model label: a metric that moved in its bad direction by more
than the suite's margin is a regression.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluation.suite import METRIC_DIRECTIONS
from tuneserve.home import tuneserve_home

DB_NAME = "eval_history.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    started_at TEXT NOT NULL,
    models TEXT NOT NULL,
    metrics TEXT NOT NULL,
    report_dir TEXT,
    regressed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_suite ON runs (suite, id);
"""


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
    """The run store. ``History()`` opens ``$TUNESERVE_HOME/eval_history.sqlite``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or tuneserve_home() / DB_NAME
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def add(self, record: dict[str, Any], report_dir: Path | None, regressed: bool) -> int:
        """Store a scored run record; returns its id."""
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO runs (suite, started_at, models, metrics, report_dir, regressed)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record["suite"],
                    record["started_at"],
                    json.dumps(record["models"]),
                    json.dumps(record["metrics"]),
                    str(report_dir) if report_dir else None,
                    int(regressed),
                ),
            )
            return int(cur.lastrowid)

    def previous(self, suite: str) -> RunRow | None:
        """The latest stored run of ``suite``."""
        rows = self.runs(suite, limit=1)
        return rows[0] if rows else None

    def runs(self, suite: str | None = None, limit: int = 20) -> list[RunRow]:
        """Latest runs first, optionally of one suite."""
        query = "SELECT * FROM runs"
        params: tuple = ()
        if suite:
            query += " WHERE suite = ?"
            params = (suite,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, (*params, limit)).fetchall()
        return [
            RunRow(
                id=r["id"],
                suite=r["suite"],
                started_at=r["started_at"],
                models=json.loads(r["models"]),
                metrics=json.loads(r["metrics"]),
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
