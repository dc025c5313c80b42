"""The audit log: who changed what is served (adapter add/remove, alias promote/rollback/
delete, batch create/cancel, job create/cancel), one JSON line per action in
``$TUNESERVE_HOME/audit/audit.jsonl``, read back by admins at ``GET /v1/audit``.

Each entry names the caller by ``key_id`` (a digest of the key: enough to tell keys apart
and to find the key in the keys file, useless to call the API with), never the key.
A JSON-lines file rather than a table: append-only, readable with ``tail`` and ``jq``, and
safe to ship to a log collector as it is.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Request


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, request: Request, action: str, target: str, **details: Any) -> None:
        state = request.state
        entry = {"time": int(time.time()), "action": action, "target": target,
                 "role": getattr(state, "role", None),
                 "project": getattr(state, "project", "default"),
                 "key_id": getattr(state, "key_id", None), **details}
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first."""
        if not self.path.exists():
            return []
        with self._lock:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in reversed(lines[-limit:]) if line.strip()]


def record(request: Request, action: str, target: str, **details: Any) -> None:
    request.app.state.audit.record(request, action, target, **details)
