#!/usr/bin/env bash
# System packages the tests need beyond the Python venv (idempotent: installs only what is
# missing). `make test` runs it before the suite.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

# Headless Chromium for the browser tests (UI, HTML report screenshots), driven by
# Playwright's Python API with executable_path=/usr/bin/chromium.
command -v chromium >/dev/null 2>&1 || apt_install chromium

# PostgreSQL server binaries for the storage tests: the test fixture (tests/postgres.py)
# runs its own throwaway server from /usr/lib/postgresql/<major>/bin on a loopback port.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
