"""The /ui mount: served inside a FastAPI app, and it finds its own server's address."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import httpx
import uvicorn
from ui_fake_api import _free_port, build_fake_api

from ui.app import detect_server
from ui.mount import UI_PATH, mount


def test_detect_server_uses_the_socket_the_browser_reached():
    request = SimpleNamespace(request=SimpleNamespace(scope={"server": ("10.1.2.3", 8123)}))
    assert detect_server("", request) == "http://10.1.2.3:8123"
    v6 = SimpleNamespace(request=SimpleNamespace(scope={"server": ("::1", 80)}))
    assert detect_server(" ", v6) == "http://[::1]:80"
    assert detect_server("http://remote:9", request) == "http://remote:9"  # user's choice wins


def test_mount_disabled_by_env(monkeypatch):
    monkeypatch.setenv("TUNESERVE_UI", "0")
    app = build_fake_api()
    before = len(app.routes)
    mount(app)
    assert len(app.routes) == before


def test_mounted_ui_serves_its_page_next_to_the_api(monkeypatch):
    monkeypatch.delenv("TUNESERVE_UI", raising=False)
    app = build_fake_api()
    mount(app)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(f"{base}{UI_PATH}/", follow_redirects=True, timeout=20)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        config = httpx.get(f"{base}{UI_PATH}/config", timeout=20).json()
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"Compare", "Adapters", "Evaluate", "Train"} <= labels
        assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 200  # API untouched
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_tuneserve_ui_runs_standalone_against_a_server():
    """``tuneserve ui --server URL`` serves the app on its own port."""
    import subprocess
    import sys

    from ui_fake_api import running_fake_api

    port = _free_port()
    with running_fake_api() as api:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneserve.cli", "ui", "--server", api, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False"},
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
            values = [c.get("props", {}).get("value") for c in config["components"]]
            assert api in values  # the server URL is pre-filled
        finally:
            process.terminate()
            process.wait(timeout=20)
        assert f"tuneserve UI for {api}" in process.stdout.read().decode()
