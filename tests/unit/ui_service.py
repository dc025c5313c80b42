"""The real service (``service.app.build_app``) on a loopback port with the fake engine, for
the UI's unit tests: the UI is an HTTP client, so it needs a socket, and it gets the real
routes, auth, registry, file validation and job supervisor (the real ``tuneserve train``
on the tiny model). Only generation is fake (tests/unit/service_fake_engine.py); the UI
against real vLLM is tests/integration/test_ui_browser.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

BASE = "tiny"
ADAPTER = "docker"
USER_KEY = "ui-user-key-0123456789"
ADMIN_KEY = "ui-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _engine_factory(settings, model_path: Path, base_id: str):
    from transformers import AutoTokenizer

    from tests.unit.service_fake_engine import FakeEngine

    return FakeEngine(model_path=model_path, tokenizer=AutoTokenizer.from_pretrained(model_path))


@contextmanager
def serving(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_service(tiny_model_dir: Path, home: Path, *, ui: bool = False) -> Iterator[str]:
    """The real app for the tiny base (served as ``tiny``) with a user and an admin key and
    one registered LoRA adapter (``docker``); yields its URL once ready."""
    from service.app import build_app
    from service.settings import Settings
    from tests.unit.service_lora import make_lora_adapter

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNESERVE_HOME", str(home))
        env.setenv("TUNESERVE_UI", "1" if ui else "0")
        env.setenv("TUNESERVE_JOBS_EVALUATE_ON_SUCCESS", "false")
        env.setenv("TUNESERVE_JOBS_POLL_INTERVAL_S", "0.1")
        settings = Settings(
            base_model=str(tiny_model_dir),
            served_model_name=BASE,
            user_api_keys=[USER_KEY],
            admin_api_keys=[ADMIN_KEY],
        )
        with serving(build_app(settings, _engine_factory)) as url:
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become ready")
                time.sleep(0.05)
            adapter = make_lora_adapter(tiny_model_dir, home / "docker-adapter")
            response = httpx.post(
                f"{url}/v1/adapters",
                json={"name": ADAPTER, "path": str(adapter)},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30,
            )
            response.raise_for_status()
            yield url
