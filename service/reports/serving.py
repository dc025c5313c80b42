"""Listing evaluation reports and resolving a requested file safely.

Only plain names are accepted for the folder and the file (letters, digits, ``.``, ``_``,
``-``; no leading dot), and the resolved path must stay inside the reports folder, so a
request can never read anything else (``..``, absolute paths, symlinks out). A report is
shown to a project only when it may use every model the report names
(``service.tenancy.report_visible``); to others it is absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from service.errors import NotFound
from service.reports.protocol import ReportInfo, ReportList

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
}


# Whether a caller may see a report that names these model ids (service.tenancy).
Visible = Callable[[list[str]], bool]


def model_ids(folder: Path) -> list[str]:
    """The server model ids a report evaluated (``report.json``); [] when unreadable."""
    try:
        record = json.loads((folder / "report.json").read_text())
        return [str(m["model_id"]) for m in record["models"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


class ReportsServing:
    """Reads reports under ``root`` (``$TUNESERVE_HOME/reports`` in the service)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self, limit: int = 100, visible: Visible | None = None) -> ReportList:
        """Newest first (folder names start with the suite, so sort by mtime); only the
        reports whose models ``visible`` accepts (None: all)."""
        if not self.root.is_dir():
            return ReportList(data=[])
        folders = [p for p in self.root.iterdir() if p.is_dir() and _SAFE_NAME.match(p.name)]
        if visible is not None:
            folders = [p for p in folders if visible(model_ids(p))]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return ReportList(data=[self._info(p) for p in folders[:limit]])

    def _info(self, folder: Path) -> ReportInfo:
        info = ReportInfo(
            id=folder.name,
            files=sorted(p.name for p in folder.iterdir() if p.is_file()),
            url=f"/reports/{folder.name}/report.html",
        )
        try:
            record = json.loads((folder / "report.json").read_text())
        except (OSError, ValueError):
            return info  # a folder without a readable record is still listed
        from evaluation.report import headline

        info.suite = record.get("suite")
        info.started_at = record.get("started_at")
        info.models = [m.get("label", "") for m in record.get("models", [])]
        info.regressed = bool((record.get("regression") or {}).get("regressions"))
        try:
            info.headline = headline(record)
        except (KeyError, TypeError):
            pass
        return info

    def file(self, report_id: str, filename: str,
             visible: Visible | None = None) -> tuple[Path, str]:
        """The path and media type of one report file; NotFound for anything else, and for
        a report whose models ``visible`` refuses (the same answer: its id says nothing)."""
        if not (_SAFE_NAME.match(report_id) and _SAFE_NAME.match(filename)):
            raise NotFound(f"no report file {report_id}/{filename}")
        path = (self.root / report_id / filename).resolve()
        root = self.root.resolve()
        if root not in path.parents or not path.is_file() or (
                visible is not None and not visible(model_ids(self.root / report_id))):
            raise NotFound(f"no report file {report_id}/{filename}")
        return path, MEDIA_TYPES.get(path.suffix, "application/octet-stream")
