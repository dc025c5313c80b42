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
OTHER_KEY = "ui-other-project-key-0123"  # a user key of project "other"


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


def _logging_paths(app, paths: list[str]):
    async def logged(scope, receive, send):
        if scope["type"] == "http":
            paths.append(scope["path"])
        await app(scope, receive, send)

    return logged


@contextmanager
def running_service(
    tiny_model_dir: Path, home: Path, *, ui: bool = False, paths: list[str] | None = None
) -> Iterator[str]:
    """The real app for the tiny base (served as ``tiny``) with a user and an admin key and
    one registered LoRA adapter (``docker``); yields its URL once ready. ``paths``, when
    given, receives the path of every HTTP request the app serves (a request log)."""
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
            user_api_keys=[USER_KEY, OTHER_KEY],
            admin_api_keys=[ADMIN_KEY],
            key_projects={OTHER_KEY: "other"},
        )
        app = build_app(settings, _engine_factory)
        with serving(app if paths is None else _logging_paths(app, paths)) as url:
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


def call_ui_handlers(
    ui_url: str, values: dict[str, list] | None = None, timeout: float = 120.0
) -> dict[str, dict]:
    """Call the UI's server-side handlers through Gradio's own queue API as one fresh
    session (no login): what a caller who skips the page can do. ``values``: the handlers
    to call by name with their inputs; None: every handler once, with empty inputs.
    Returns {"<index>:<name>": the ``process_completed`` message}."""
    import json
    import uuid

    config = httpx.get(f"{ui_url}/config", timeout=30).json()
    session = uuid.uuid4().hex
    pending: dict[str, str] = {}
    for index, dep in enumerate(config["dependencies"]):
        name = dep.get("api_name") or ""
        if not dep.get("backend_fn") or (values is not None and name not in values):
            continue
        # State inputs are taken from the server's session whatever is sent here.
        data = values[name] if values is not None else [None for _ in dep["inputs"]]
        joined = httpx.post(f"{ui_url}/gradio_api/queue/join", timeout=30, json={
            "data": data, "fn_index": index, "session_hash": session, "trigger_id": None,
        })
        joined.raise_for_status()
        pending[joined.json()["event_id"]] = f"{index}:{name}"
    done: dict[str, dict] = {}
    with httpx.stream("GET", f"{ui_url}/gradio_api/queue/data",
                      params={"session_hash": session}, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[len("data:"):])
            if message.get("msg") == "process_completed" and message.get("event_id") in pending:
                done[pending[message["event_id"]]] = message
                if len(done) == len(pending):
                    break
    return done
