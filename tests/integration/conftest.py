"""Integration fixtures of the serving side (contract #2).

- ``live_server``: ``tuneserve serve`` as a real subprocess on the real Gemma base with
  real vLLM, started once per test session on a free loopback port, with a temp
  ``$TUNESERVE_HOME``, a watched adapters folder, and user + admin API keys.
- ``tiny_live_server``: the same on the tiny random model.
- ``gemma_test_adapter``: a legit non-zero LoRA adapter of the real base (PEFT,
  ``init_lora_weights=False``, r=8, safetensors), made in seconds without training.
"""

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
import pytest

from tests.unit.service_lora import make_lora_adapter

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 420
# The keys start_server gives every server (its admin key also reads /metrics).
USER_KEY, ADMIN_KEY = "test-user-key-0123456789", "test-admin-key-0123456789"


def metrics_text(base_url: str) -> str:
    """``/metrics`` of a server started by start_server (it needs the admin key)."""
    response = httpx.get(f"{base_url}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return response.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running ``tuneserve serve`` process and how to talk to it."""

    base_url: str
    user_key: str
    admin_key: str
    home: Path
    adapters_dir: Path
    model_id: str
    model_path: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def openai(self, *, admin: bool = False, **kw):
        """An official ``openai.OpenAI`` client for this server (user key by default)."""
        import openai

        key = self.admin_key if admin else self.user_key
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, **kw)

    def http(self, *, admin: bool = False, timeout: float = 120.0) -> httpx.Client:
        key = self.admin_key if admin else self.user_key
        return httpx.Client(base_url=self.base_url, timeout=timeout,
                            headers={"Authorization": f"Bearer {key}"})

    def register_adapter(self, path: Path | str, name: str) -> dict:
        """Serve the adapter folder ``path`` as ``name`` (admin call); returns the record.
        Raises AssertionError with the server's reason when it is rejected."""
        with self.http(admin=True) as client:
            response = client.post("/v1/adapters", json={"name": name, "path": str(path)})
        assert response.status_code == 201, response.text
        return response.json()

    def unregister_adapter(self, name: str) -> None:
        with self.http(admin=True) as client:
            response = client.delete(f"/v1/adapters/{name}")
        assert response.status_code in (200, 404), response.text

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_server(model_path: Path, model_id: str, workdir: Path, *extra: str,
                 env: dict[str, str] | None = None) -> LiveServer:
    """Start ``tuneserve serve`` and wait until ``/ready`` (fails with the log tail);
    ``env``: more environment (e.g. a keys file with projects)."""
    home, adapters_dir = workdir / "home", workdir / "adapters"
    adapters_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    user_key, admin_key = USER_KEY, ADMIN_KEY
    env = {
        **os.environ,
        **(env or {}),
        "TUNESERVE_HOME": str(home),
        "TUNESERVE_USER_API_KEYS": user_key,
        "TUNESERVE_ADMIN_API_KEYS": admin_key,
        "TUNESERVE_WATCH_INTERVAL_S": "0.5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log_path = workdir / "server.log"
    command = [
        sys.executable, "-m", "tuneserve.cli", "serve", "--model", str(model_path),
        "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
        "--adapters-dir", str(adapters_dir), "--max-model-len", "1024",
        "--kv-cache-space", "1", *extra,
    ]
    with open(log_path, "wb") as log:
        # Own session: teardown can signal the server and the engine processes it spawned.
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(f"http://127.0.0.1:{port}", user_key, admin_key, home, adapters_dir,
                        model_id, model_path, log_path, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tuneserve serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    pytest.fail(f"tuneserve serve not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")


def stop_server(server: LiveServer) -> None:
    """SIGINT (graceful), then SIGKILL the process group if it lingers."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def live_server(real_model_dir, tmp_path_factory):
    server = start_server(Path(real_model_dir), "gemma-3-270m",
                          tmp_path_factory.mktemp("live-server"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def tiny_live_server(tiny_model_dir, tmp_path_factory):
    server = start_server(Path(tiny_model_dir), "tiny-gemma",
                          tmp_path_factory.mktemp("tiny-live-server"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def gemma_test_adapter(real_model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(Path(real_model_dir),
                             tmp_path_factory.mktemp("gemma-test-adapter") / "adapter")
