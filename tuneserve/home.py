"""Where tuneserve keeps its state: models, adapters, registry, jobs, reports.

Everything lives under one folder, ``$TUNESERVE_HOME`` (default ``~/.cache/tuneserve``),
so a deployment mounts one volume and a test points the variable at a temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path


def tuneserve_home() -> Path:
    """The root folder of all tuneserve state (created on first use)."""
    home = Path(os.environ.get("TUNESERVE_HOME") or Path.home() / ".cache" / "tuneserve")
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Prepared base models, one plain Hugging Face checkpoint per folder."""
    return _sub("models")


def adapters_dir() -> Path:
    """Trained / uploaded adapters, one folder per adapter name."""
    return _sub("adapters")


def reports_dir() -> Path:
    """Evaluation reports (JSON, Markdown, HTML)."""
    return _sub("reports")


def _sub(name: str) -> Path:
    path = tuneserve_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
