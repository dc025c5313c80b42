"""Fast reliability/security checks (no engine): constant-time key comparison, secrets
kept out of reprs and logs, crash-safe storage (SQLite WAL), archive and safetensors
parsers that refuse lying inputs with AdapterRejected, and the HTTP layer (fake engine)
answering hostile bodies and overload with 4xx. The same promises run against the real
server in tests/integration/test_reliability_*.py."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import struct
import threading
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.settings import Settings
from tests.unit.service_fake_engine import FakeEngine

REAL_LORA_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
USER_KEY = "user-key-reliability-0123"
ADMIN_KEY = "admin-key-reliability-0123"


# -- keys ----------------------------------------------------------------------------------
class _Request:
    def __init__(self, settings: Settings, headers: dict[str, str]):
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.app = type("App", (), {"state": type("State", (), {"settings": settings})()})()
        self.state = type("RequestState", (), {})()


def _settings(**kw) -> Settings:
    return Settings(user_api_keys=f"{USER_KEY},user-key-second-4567",
                    admin_api_keys=ADMIN_KEY, **kw)


@pytest.mark.parametrize("presented", [
    USER_KEY, ADMIN_KEY, "user-key-second-4567",  # right keys
    "x" + USER_KEY[1:], USER_KEY[:-1] + "X",  # wrong keys of the same length
    "short", USER_KEY[:-1], USER_KEY + "0", ADMIN_KEY + USER_KEY,  # other lengths, prefixes
])
def test_keys_compared_in_constant_time_against_every_key(monkeypatch, presented):
    import hmac

    from service import deps
    from service.errors import Unauthorized

    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", counting)
    settings = _settings()
    request = _Request(settings, {"Authorization": f"Bearer {presented}"})
    try:
        role = deps.role_of(request)
    except Unauthorized:
        role = None
    assert role == {USER_KEY: "user", "user-key-second-4567": "user",
                    ADMIN_KEY: "admin"}.get(presented)
    # No == on secrets: every comparison went through compare_digest, and a match does not
    # stop the loop early (the admin list is always scanned in full).
    assert len(calls) >= len(settings.admin_api_keys)
    if role != "admin":
        assert len(calls) == len(settings.admin_api_keys) + len(settings.user_api_keys)


def test_keys_not_in_settings_repr_or_errors():
    settings = _settings()
    assert USER_KEY not in repr(settings) and ADMIN_KEY not in repr(settings)
    assert USER_KEY not in str(settings.model_dump(exclude={"user_api_keys", "admin_api_keys"}))
    with pytest.raises(ValueError) as exc:
        Settings(user_api_keys="weak")
    assert all("weak" not in error["msg"] for error in exc.value.errors())


def test_cli_refuses_a_weak_key_without_echoing_it(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TUNESERVE_HOME": str(tmp_path), "TUNESERVE_USER_API_KEYS": "Zq9wea7"}
    result = subprocess.run([sys.executable, "-m", "tuneserve.cli", "serve", "--model",
                             str(tiny_model_dir), "--port", "0"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert result.returncode != 0
    assert "API key" in result.stderr + result.stdout
    assert "Zq9wea7" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# -- crash-safe storage --------------------------------------------------------------------
def test_registry_database_uses_wal(tmp_path, tiny_model_dir):
    from service.adapters.checks import BaseModelShape
    from service.adapters.registry import AdapterRegistry

    base = BaseModelShape.from_checkpoint("tiny", Path(tiny_model_dir))
    registry = AdapterRegistry(tmp_path / "registry.sqlite", FakeEngine(tiny_model_dir, None),
                               base, 16)
    registry.close()
    db = sqlite3.connect(tmp_path / "registry.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_jobs_store_reads_while_another_connection_writes(tmp_path, monkeypatch):
    # WAL: a reader (the API) is not blocked by a writer's open transaction (the supervisor,
    # the CLI). Without WAL an exclusive writer locks readers out until SQLite gives up.
    from service.jobs.store import JobStore
    from tuneserve import database

    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    store = JobStore(tmp_path / "jobs")
    store.add_file(file_id="file-1", filename="a.jsonl", purpose="fine-tune", size=1,
                   path=tmp_path / "a.jsonl", rows=1)
    writer = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE files SET rows = 2 WHERE id = 'file-1'")
        assert (tmp_path / "jobs" / "jobs.sqlite-wal").is_file()
        assert store.get_file("file-1")["rows"] == 1  # the committed state, at once
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# -- lying archives and weights ------------------------------------------------------------
def _zip_with(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _lie_about_size(raw: bytearray, name: bytes, size: int) -> None:
    for sig, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30),
                                               (b"PK\x01\x02", 24, 28, 46)):
        pos = raw.find(sig)
        while pos != -1:
            n = struct.unpack_from("<H", raw, pos + name_len_at)[0]
            if bytes(raw[pos + name_at: pos + name_at + n]) == name:
                struct.pack_into("<I", raw, pos + size_at, size)
            pos = raw.find(sig, pos + 4)


def test_zip_whose_headers_lie_is_rejected(tmp_path):
    from service.adapters.archive import extract_archive
    from service.errors import AdapterRejected

    raw = bytearray(_zip_with({"adapter_config.json": b"{}",
                               "adapter_model.safetensors": b"\0" * (4 * 1024 * 1024)}))
    _lie_about_size(raw, b"adapter_model.safetensors", 100)
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(raw))
    with pytest.raises(AdapterRejected) as exc:
        extract_archive(archive, tmp_path / "out" / "liar", max_bytes=1024 * 1024)
    assert exc.value.status_code == 400
    assert not (tmp_path / "out" / "liar").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # staging cleaned up


def test_zip_bomb_refused_before_unpacking(tmp_path):
    from service.adapters.archive import extract_archive
    from service.errors import AdapterRejected

    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip_with({"adapter_config.json": b"{}",
                                   "zeros.bin": b"\0" * (8 * 1024 * 1024)}))
    assert archive.stat().st_size < 64 * 1024  # 8 MiB of zeros packs small
    with pytest.raises(AdapterRejected) as exc:
        extract_archive(archive, tmp_path / "out" / "bomb", max_bytes=1024 * 1024)
    assert exc.value.code == "archive_too_large"


@pytest.mark.parametrize("header", [
    {"dtype": "F32", "shape": [8, 64], "data_offsets": [0, 2048]},  # 2 KiB claimed, 16 held
    {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]},
    {"dtype": "F32", "shape": [8, -1], "data_offsets": [0, 16]},
    {"dtype": "NOPE", "shape": [2, 2], "data_offsets": [0, 16]},
])
def test_safetensors_header_that_lies_is_rejected(tmp_path, tiny_model_dir, header):
    # A real LoRA key of the base (the control below serves it), so only the lie in the
    # header can be what is refused.
    from service.adapters.checks import BaseModelShape, _check_shapes
    from service.errors import AdapterRejected

    weights = tmp_path / "adapter_model.safetensors"
    _write_safetensors(weights, header, 16)
    base = BaseModelShape.from_checkpoint("tiny", Path(tiny_model_dir))
    with pytest.raises(AdapterRejected, match="is not a readable safetensors file"):
        _check_shapes(weights, 8, base)


def test_safetensors_header_that_tells_the_truth_passes(tmp_path, tiny_model_dir):
    from service.adapters.checks import BaseModelShape, _check_shapes

    weights = tmp_path / "adapter_model.safetensors"
    _write_safetensors(weights, {"dtype": "F32", "shape": [8, 64], "data_offsets": [0, 2048]},
                       2048)
    _check_shapes(weights, 8, BaseModelShape.from_checkpoint("tiny", Path(tiny_model_dir)))


def _write_safetensors(path: Path, entry: dict, data_bytes: int) -> None:
    raw = json.dumps({REAL_LORA_KEY: entry}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)


# -- the HTTP layer on a fake engine -------------------------------------------------------
@pytest.fixture
def make_client(tiny_model_dir, isolated_home, monkeypatch):
    monkeypatch.setenv("TUNESERVE_UI", "0")
    clients = []

    def make(engine_kw=None, **settings_kw):
        holder: dict = {}

        def factory(settings, model_path, base_id):
            from transformers import AutoTokenizer

            holder["engine"] = FakeEngine(model_path=model_path,
                                          tokenizer=AutoTokenizer.from_pretrained(model_path),
                                          **(engine_kw or {}))
            return holder["engine"]

        settings = Settings(base_model=str(tiny_model_dir), served_model_name="tiny",
                            user_api_keys=USER_KEY, admin_api_keys=ADMIN_KEY, **settings_kw)
        client = TestClient(build_app(settings, factory),
                            headers={"Authorization": f"Bearer {USER_KEY}"})
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        client.engine = holder["engine"]
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _assert_4xx(response, status=400):
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "tiny", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
    b"",
    b"\x00\x01\x02",
])
def test_hostile_bodies_are_400(make_client, raw):
    client = make_client()
    response = client.post("/v1/chat/completions", content=raw,
                           headers={"Content-Type": "application/json"})
    _assert_4xx(response)
    assert client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_overload_is_429_with_retry_after(make_client):
    client = make_client(engine_kw={"delay_s": 0.2}, max_in_flight=2)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    results: list[int] = []
    headers: list[str | None] = []

    def one():
        response = client.post("/v1/chat/completions", json=body)
        results.append(response.status_code)
        headers.append(response.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8 and set(results) <= {200, 429}
    assert results.count(200) >= 2 and results.count(429) >= 1
    assert all(h and int(h) >= 1 for s, h in zip(results, headers, strict=True) if s == 429)


def test_keys_never_reach_the_log(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client()
    client.get("/v1/models")
    client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-abcdef-9876"})
    client.post("/v1/adapters", json={"name": "x", "path": "/nope"})
    client.post("/v1/adapters", json={"name": "x", "path": "/nope"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    text = caplog.text
    for secret in (USER_KEY, ADMIN_KEY, "wrong-key-abcdef-9876"):
        assert secret not in text


def test_event_loop_stays_responsive_to_health_during_overload(make_client):
    # /health must answer while inference slots are full (probes never time out).
    client = make_client(engine_kw={"delay_s": 0.1}, max_in_flight=1)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    worker = threading.Thread(target=lambda: client.post("/v1/chat/completions", json=body))
    worker.start()
    started = time.monotonic()
    assert client.get("/health").status_code == 200
    assert time.monotonic() - started < 5
    worker.join(30)


async def test_crash_during_restore_forgets_no_adapter(tmp_path, tiny_model_dir):
    """A restart that dies while reloading the registry (here: the engine blows up on the
    second adapter) must leave every row in place for the next start."""
    import shutil

    from service.adapters.checks import BaseModelShape
    from service.adapters.registry import AdapterRegistry
    from tests.unit.service_lora import make_lora_adapter

    base = BaseModelShape.from_checkpoint("tiny", Path(tiny_model_dir))
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "src")
    db = tmp_path / "registry.sqlite"
    registry = AdapterRegistry(db, FakeEngine(tiny_model_dir, None), base, 16)
    for name in ("a1", "a2", "a3"):
        shutil.copytree(adapter, tmp_path / name)
        await registry.add(name, tmp_path / name)
    registry.close()

    class DyingEngine(FakeEngine):
        async def add_adapter(self, handle) -> None:
            if handle.name == "a2":
                raise RuntimeError("engine process died")  # not a rejection: a crash
            await super().add_adapter(handle)

    crashed = AdapterRegistry(db, DyingEngine(tiny_model_dir, None), base, 16)
    with pytest.raises(RuntimeError):
        await crashed.restore()
    crashed.close()
    rows = sqlite3.connect(db).execute("SELECT name FROM adapters ORDER BY name").fetchall()
    assert [r[0] for r in rows] == ["a1", "a2", "a3"]

    engine = FakeEngine(tiny_model_dir, None)
    healthy = AdapterRegistry(db, engine, base, 16)
    assert await healthy.restore() == []
    assert set(engine.adapters) == {"a1", "a2", "a3"}
    healthy.close()


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "https://api.openai.com",
                                 "http://192.168.1.2", "http://example.com:8000"])
def test_load_test_refuses_non_loopback_targets(url):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2]))
    from bench.load_test import check_loopback

    with pytest.raises(SystemExit, match="only loopback"):
        check_loopback(url)
    for ok in ("http://127.0.0.1:8000", "http://localhost:1234", "http://[::1]:80"):
        check_loopback(ok)


def test_inference_body_is_bounded_before_it_is_read(make_client):
    client = make_client()  # max_model_len 2048 -> limit max(1 MiB, 2048 * 64) = 1 MiB
    big = {"model": "tiny", "messages": [{"role": "user", "content": "a" * (2 << 20)}]}
    response = client.post("/v1/chat/completions", json=big)
    _assert_4xx(response, 413)
    assert response.json()["error"]["code"] == "payload_too_large"
    _assert_4xx(client.post("/v1/completions", json={"model": "tiny", "prompt": "a" * (2 << 20)}),
                413)

    def chunked():
        yield b'{"model": "tiny", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    response = client.post("/v1/chat/completions", content=chunked(),
                           headers={"Content-Type": "application/json"})
    _assert_4xx(response, 411)
    # Bodies under the limit, and other routes (adapter uploads, files), are untouched.
    assert client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "a" * 100}]}).status_code == 200
