"""Faults on a real server (``tuneserve serve``, real vLLM, tiny model): kill -9 in the
middle of an adapter load, restart on the same ``$TUNESERVE_HOME``; half-written and
corrupt adapter folders in the watched folder.

Promises: the registry (SQLite, WAL) survives a kill -9 intact and is served again after
a restart; a half-written adapter folder is never served (it is once complete); a
corrupt one is quarantined (not served, reason logged and counted, not retried until its
files change) while the other adapters load. The kill -9 of a fine-tuning job is covered
by tests/integration/test_jobs_tiny_server.py (jobs, files and events survive)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import start_server, stop_server
from tests.integration.reliability_support import chat_ok, metric
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
MODEL_ID = "tiny-faults"


def _served(server) -> set[str]:
    with server.http() as client:
        return {m["id"] for m in client.get("/v1/models").json()["data"]}


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _kill9(server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def test_kill9_mid_adapter_load_and_bad_folders(tiny_model_dir, tmp_path):
    model = Path(tiny_model_dir)
    source = make_lora_adapter(model, tmp_path / "src-adapter")
    other = make_lora_adapter(model, tmp_path / "api-adapter", seed=1)
    weights = (source / "adapter_model.safetensors").read_bytes()
    adapters = tmp_path / "adapters"
    shutil.copytree(source, adapters / "good-a")
    corrupt = adapters / "corrupt-b"
    shutil.copytree(source, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x13\x37" * 512)  # not safetensors
    half = adapters / "half-c"
    half.mkdir()
    (half / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    (half / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])

    server = start_server(model, MODEL_ID, tmp_path)
    try:
        # Only the complete, valid folder serves; the others are quarantined with a reason.
        _wait_for(lambda: "good-a" in _served(server), 30, "good-a")
        served = _served(server)
        assert "corrupt-b" not in served and "half-c" not in served
        log = server.log_path.read_text(errors="replace")
        assert "corrupt-b not served" in log and "safetensors" in log
        rejected = metric(server.base_url, "tuneserve_adapter_operations_total")
        assert rejected >= 3  # two rejected + one ok load counted

        # The half-written folder stays unserved across scans, then serves once complete.
        time.sleep(2)  # four watcher scans
        assert "half-c" not in _served(server)
        (half / "adapter_model.safetensors").write_bytes(weights)
        _wait_for(lambda: "half-c" in _served(server), 30, "half-c once complete")
        chat_ok(server, "half-c")

        server.register_adapter(other, "api-x")
        # kill -9 while another registration is in flight.
        result: dict[str, object] = {}

        def register_y():
            try:
                with server.http(admin=True, timeout=30) as admin:
                    result["status"] = admin.post("/v1/adapters", json={
                        "name": "api-y", "path": str(other)}).status_code
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)

        thread = threading.Thread(target=register_y)
        thread.start()
        time.sleep(0.01)
        _kill9(server)
        thread.join(30)
    except BaseException:
        stop_server(server)
        raise

    db_path = tmp_path / "home" / "registry" / f"{MODEL_ID}.sqlite"
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = {name for (name,) in db.execute("SELECT name FROM adapters")}
    db.close()
    assert {"good-a", "half-c", "api-x"} <= rows, rows

    restarted = start_server(model, MODEL_ID, tmp_path)
    try:
        _wait_for(lambda: {"good-a", "half-c", "api-x"} <= _served(restarted), 30,
                  "adapters restored after kill -9")
        served = _served(restarted)
        assert "corrupt-b" not in served
        for name in ("good-a", "api-x"):
            chat_ok(restarted, name)
        # The registration cut by the kill is either fully there or fully absent.
        if "api-y" in served:
            chat_ok(restarted, "api-y")
        else:
            with restarted.http(admin=True) as admin:
                again = admin.post("/v1/adapters", json={"name": "api-y", "path": str(other)})
            assert again.status_code == 201, again.text
            chat_ok(restarted, "api-y")
        chat_ok(restarted)
    finally:
        stop_server(restarted)
