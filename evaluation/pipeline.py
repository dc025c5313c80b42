"""One evaluation run end to end: collect, score, compare with history, write reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.history import History, check_against_previous
from evaluation.report import report_dir_name, write_reports
from evaluation.runner import RunOptions, run_suite
from evaluation.suite import Suite
from tuneserve.home import reports_dir

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    record: dict[str, Any]
    paths: dict[str, Path]
    run_id: int | None

    @property
    def regressed(self) -> bool:
        return bool((self.record.get("regression") or {}).get("regressions"))


def run_and_report(
    suite: Suite,
    models: str,
    opts: RunOptions,
    *,
    output_root: Path | None = None,
    history: History | None = None,
    store: bool = True,
) -> RunResult:
    """Run ``suite`` for ``models`` ("base,adapter,..."), check for regressions against the
    previous stored run of the suite, write the reports and (when ``store``) record the run."""
    record = run_suite(suite, models, opts)
    history = history or History()
    check_against_previous(history, record, suite.regression.margins)
    root = output_root or reports_dir()
    out_dir = root / report_dir_name(record)
    suffix = 1
    while out_dir.exists():  # two runs in the same second keep separate folders
        suffix += 1
        out_dir = root / f"{report_dir_name(record)}-{suffix}"
    paths = write_reports(record, out_dir)
    regressed = bool(record["regression"]["regressions"])
    run_id = history.add(record, out_dir, regressed) if store else None
    log.info("report written to %s", out_dir)
    return RunResult(record=record, paths=paths, run_id=run_id)
