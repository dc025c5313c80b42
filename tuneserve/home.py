"""Where tuneserve keeps its state: models, adapters, registry, jobs, reports.

Everything lives under one folder, ``$TUNESERVE_HOME`` (default ``~/.cache/tuneserve``),
so a deployment mounts one volume and a test points the variable at a temp dir.
Several replicas share what every one of them must read (uploaded files, job runs, the
adapter store) under ``$TUNESERVE_SHARED_DIR``, a folder they all mount (a ReadWriteMany
volume); it defaults to ``$TUNESERVE_HOME``, so one process changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path


def tuneserve_home() -> Path:
    """The root folder of all tuneserve state (created on first use)."""
    home = Path(os.environ.get("TUNESERVE_HOME") or Path.home() / ".cache" / "tuneserve")
    home.mkdir(parents=True, exist_ok=True)
    return home


def shared_dir() -> Path:
    """The folder every replica mounts: ``$TUNESERVE_SHARED_DIR``, else ``$TUNESERVE_HOME``."""
    configured = os.environ.get("TUNESERVE_SHARED_DIR", "").strip()
    if not configured:
        return tuneserve_home()
    shared = Path(configured)
    shared.mkdir(parents=True, exist_ok=True)
    return shared


def replica_id() -> str:
    """Which replica this process is, stable across its restarts: the host name and a hash
    of ``$TUNESERVE_HOME``. Two replicas on one host (different homes) or two pods differ;
    the job supervisor and batch runner name their leases after it, so a restarted process
    settles what its predecessor held at once and leaves other replicas' work alone."""
    home = hashlib.sha1(str(tuneserve_home().resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{home}"


def lease_owner(replica: str | None = None) -> str:
    """A lease holder's id, ``<replica>:<pid>:<token>``: unique per process (even after a
    restart under the same pid), its replica readable back with ``owner_replica``."""
    return f"{replica or replica_id()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_replica(owner: str | None) -> str | None:
    """The replica id of a lease owner id ``<replica>:<pid>:<token>``."""
    return owner.rsplit(":", 2)[0] if owner and owner.count(":") >= 2 else None


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
