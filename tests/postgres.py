"""A real PostgreSQL server for the tests: initdb into a temp dir, ``pg_ctl start`` on a free
loopback port, stopped and removed after. One per test session (fixtures in tests/conftest.py).

The server binaries come from Debian's ``postgresql`` package (scripts/install-system-deps.sh
installs it); ``TUNESERVE_TEST_PG_BIN`` points elsewhere. initdb refuses to run as root, so
as root the server runs as the ``postgres`` system user (or ``nobody``), in dirs it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

_RUN_AS = ("postgres", "nobody")


def find_bin_dir() -> Path | None:
    configured = os.environ.get("TUNESERVE_TEST_PG_BIN")
    if configured:
        return Path(configured)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    # Debian keeps the server binaries out of PATH, one folder per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _major(initdb: str) -> int:
    version = Path(initdb).parts[-3]
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """``start()`` / ``stop()``; ``url(database)`` is a SQLAlchemy URL on the loopback port.

    With ``password`` the superuser gets it and every connection must give it
    (scram-sha-256, as the official postgres image sets up); the URL carries none."""

    def __init__(self, bin_dir: Path, user: str = "tuneserve", password: str | None = None) -> None:
        self.bin_dir = bin_dir
        self.user = user  # the superuser initdb creates (trust auth unless a password)
        self.password = password
        self.port = _free_port()
        # Not under pytest's tmp dir: that is 0700 root's, which the server user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="tuneserve-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self._run_as = _system_user() if os.getuid() == 0 else None
        self._databases = 0

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", self._run_as, "--", *cmd] if self._run_as else cmd

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        auth = ["--auth=trust"]
        if self.password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._run_as:
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", self.user, *auth,
                      "--encoding=UTF8", "--no-sync"),
            check=True, capture_output=True, text=True,
        )
        # Durability off: a test server is thrown away after the session.
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        result = subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                      "-w", "-t", "60", "start"),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{log}")

    def stop(self) -> None:
        if self.data.is_dir():
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"),
                capture_output=True,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (each test gets its own); returns its URL."""
        import sqlalchemy as sa

        self._databases += 1
        name = name or f"test_{self._databases}"
        connect_args = {"password": self.password} if self.password is not None else {}
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT",
                                  connect_args=connect_args)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)


def _system_user() -> str:
    for name in _RUN_AS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {_RUN_AS} exists to run PostgreSQL")
