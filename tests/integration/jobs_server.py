"""Start and stop a real ``tuneserve serve`` subprocess for the fine-tuning tests that must
kill and restart their own server (the shared ``live_server`` must not be killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class JobsServer:
    model: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> JobsServer:
        """Start the server and wait until /v1/models answers 200 (engine ready)."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> JobsServer:
        """Start the server process without waiting (several start at once)."""
        self.log_path = self.home / f"serve-{self.port}-{int(time.time())}.log"
        env = {**os.environ, "TUNESERVE_HOME": str(self.home), **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tuneserve.cli", "serve", "--model", str(self.model),
             "--port", str(self.port), "--max-model-len", "512", "--kv-cache-space", "1"],
            cwd=REPO_ROOT, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300.0) -> JobsServer:
        """Wait until /v1/models answers 200 (engine ready); stop the server otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """kill -9 the server and its engine processes, as a crash of the service would;
        its job workers run in process groups of their own and survive, as in a real crash.
        (Killing the server pid alone would leave vLLM's engine core orphaned, holding
        memory for the rest of the test session.)"""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""
