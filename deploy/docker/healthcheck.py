"""Container HEALTHCHECK: exit 0 when the server's /health answers 200, else 1.

Uses only the standard library (the slim image has no curl) and the same port setting
(``PORT``, which scripts/run.sh passes as ``--port``) that the server binds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe ``http://127.0.0.1:$PORT/health``; 0 = healthy."""
    port = os.environ.get("PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"health check {url} failed: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
