"""The /ui mount: served inside a FastAPI app, and it finds its own server's address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from tests.unit.ui_service import USER_KEY, call_ui_handlers, free_port, running_service
from ui.app import detect_server
from ui.mount import UI_PATH, mount

REQUESTS: list[str] = []  # every path the module's service was asked for


@pytest.fixture(scope="module")
def service(tiny_model_dir, tmp_path_factory):
    """The real service app with the UI mounted, as `tuneserve serve` runs it."""
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("ui-home"), ui=True,
                         paths=REQUESTS) as url:
        yield url


def test_without_login_no_handler_reaches_the_api(service):
    """Every UI handler, called through Gradio's queue API by a session that never logged
    in, makes no request to the API (the server's own request log), and those that would
    call it say so; a login is the first call, and the log sees it."""
    before = len(REQUESTS)
    done = call_ui_handlers(f"{service}{UI_PATH}")
    assert len(done) > 20  # every tab's handlers ran (or were refused by their inputs)
    assert [p for p in REQUESTS[before:] if not p.startswith(UI_PATH)] == []
    refused = [n for n, m in done.items() if "Not logged in" in json.dumps(m.get("output"))]
    assert {"refresh_models", "load_adapters", "list_reports", "list_jobs"} <= {
        n.split(":", 1)[1] for n in refused}
    login = call_ui_handlers(f"{service}{UI_PATH}", {"login": [None, USER_KEY]})
    (message,) = login.values()
    assert "Connected: base" in json.dumps(message["output"])
    assert USER_KEY not in json.dumps(message["output"])  # the key is never sent back
    assert "/v1/models" in REQUESTS[before:]


def test_detect_server_uses_the_socket_the_browser_reached():
    request = SimpleNamespace(request=SimpleNamespace(scope={"server": ("10.1.2.3", 8123)}))
    assert detect_server("", request) == "http://10.1.2.3:8123"
    v6 = SimpleNamespace(request=SimpleNamespace(scope={"server": ("::1", 80)}))
    assert detect_server(" ", v6) == "http://[::1]:80"
    assert detect_server("http://fixed:9", request) == "http://fixed:9"  # fixed at build
    # Never the Host header: the caller chooses it (that would be an SSRF).
    spoofed = SimpleNamespace(request=SimpleNamespace(scope={}), headers={"host": "evil:1"})
    assert detect_server("", spoofed) == ""


def test_mount_disabled_by_env(monkeypatch):
    monkeypatch.setenv("TUNESERVE_UI", "0")
    app = FastAPI()
    before = len(app.routes)
    mount(app)
    assert len(app.routes) == before


def test_mounted_ui_serves_its_page_next_to_the_api(service):
    page = httpx.get(f"{service}{UI_PATH}/", follow_redirects=True, timeout=20)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = httpx.get(f"{service}{UI_PATH}/config", timeout=20).json()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"Compare", "Adapters", "Evaluate", "Train"} <= labels
    # Nothing on the page chooses where the UI sends requests.
    assert "Server URL" not in labels and "server-url" not in page.text + str(config)
    models = httpx.get(f"{service}/v1/models", headers={"Authorization": f"Bearer {USER_KEY}"},
                       timeout=5)
    assert models.status_code == 200  # API untouched


def test_tuneserve_ui_runs_standalone_against_a_server(service):
    """``tuneserve ui --server URL`` serves the app on its own port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneserve.cli", "ui", "--server", service, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        deadline = time.monotonic() + 90
        config = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).json()
                break
            except (httpx.HTTPError, ValueError):
                time.sleep(0.5)
        assert config is not None, process.stdout.read().decode() if process.poll() else ""
        # The server is fixed by --server: not a value (nor a field) on the page.
        assert service not in json.dumps(config)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"tuneserve UI for {service}" in process.stdout.read().decode()
