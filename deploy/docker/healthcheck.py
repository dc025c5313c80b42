"""Container health checks; exit 0 = healthy, 1 = not.

- Default (the image's HEALTHCHECK, the server): ``GET http://127.0.0.1:$PORT/health``
  answers 200. Standard library only (the slim image has no curl) and the same port
  setting (``PORT``, which scripts/run.sh passes as ``--port``) that the server binds.
- ``--worker`` (the fine-tuning worker's liveness probe: it has no HTTP port): PID 1 is a
  live ``tuneserve worker`` process, i.e. the entrypoint exec'd it and it is neither
  stopped nor a zombie. It cannot see a worker whose loop hangs while the process lives.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

# /proc/PID/stat states of a process that will never make progress again by itself.
_DEAD_STATES = {"Z", "X", "x", "T", "t"}


def check_server() -> int:
    """Probe ``http://127.0.0.1:$PORT/health``; 0 = healthy."""
    port = os.environ.get("PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"health check {url} failed: {exc}\n")
        return 1


def check_worker(pid: int = 1) -> int:
    """0 when process ``pid`` runs ``tuneserve worker`` and is not stopped or a zombie."""
    proc = Path("/proc") / str(pid)
    try:
        argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
        # State is the field after the parenthesised command name (which may hold spaces).
        state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError) as exc:
        sys.stderr.write(f"worker check: process {pid} unreadable: {exc}\n")
        return 1
    words = [Path(a.decode(errors="replace")).name for a in argv if a]
    # `tuneserve worker` (the console script) or `python -m tuneserve.cli worker`.
    runs_worker = "worker" in words and any(w in ("tuneserve", "tuneserve.cli") for w in words)
    if not runs_worker:
        sys.stderr.write(f"worker check: process {pid} is not `tuneserve worker`: {words}\n")
        return 1
    if state in _DEAD_STATES:
        sys.stderr.write(f"worker check: process {pid} is in state {state}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="check the fine-tuning worker")
    parser.add_argument("--pid", type=int, default=1, help="the worker's pid (default 1)")
    args = parser.parse_args(argv)
    return check_worker(args.pid) if args.worker else check_server()


if __name__ == "__main__":
    sys.exit(main())
