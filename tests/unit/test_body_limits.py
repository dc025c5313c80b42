"""Upload bodies are refused at their cap while they stream, never spooled past it: the
BodyLimits middleware on its own (a pure ASGI app) and inside the real app."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import FastAPI, File, UploadFile

from service.body_limits import MULTIPART_SLACK, BodyLimits
from service.errors import register_error_handlers

CHUNK = 64 * 1024


def _upload_app() -> FastAPI:
    app = FastAPI()
    register_error_handlers(app)

    @app.post("/v1/files")
    async def upload(file: Annotated[UploadFile, File()]) -> dict:
        return {"bytes": len(await file.read())}

    return app


def _multipart_chunks(total: int):
    boundary = b"bound"
    yield (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
           b'filename="big.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n')
    sent = 0
    while sent < total:
        yield b"x" * CHUNK
        sent += CHUNK
    yield b"\r\n--" + boundary + b"--\r\n"


def _call(app, chunks, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, int]:
    """Send a streamed POST /v1/files; (status, body, bytes the app pulled from the client)."""
    pulled = 0
    source = iter(chunks)
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/files", "raw_path": b"/v1/files",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"content-type", b"multipart/form-data; boundary=bound"), *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_a_streamed_upload_stops_at_the_cap():
    cap = 2 << 20
    app = BodyLimits(_upload_app(), cap_for=lambda path: (cap, False))
    # 2 GB offered without a length: the app stops pulling just past the cap.
    status, body, pulled = _call(app, _multipart_chunks(2 << 30), headers=[])
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert cap < pulled <= cap + CHUNK + 1024


def test_a_declared_length_over_the_cap_is_refused_unread():
    app = BodyLimits(_upload_app(), cap_for=lambda path: (1 << 20, False))
    status, body, pulled = _call(app, _multipart_chunks(2 << 30),
                                 headers=[(b"content-length", str(2 << 30).encode())])
    assert (status, pulled) == (413, 0)
    assert "over the limit" in body["error"]["message"]


def test_uploads_under_the_cap_pass():
    app = BodyLimits(_upload_app(), cap_for=lambda path: (1 << 20, False))
    status, body, _ = _call(app, _multipart_chunks(10 * CHUNK), headers=[])
    assert status == 200 and body == {"bytes": 10 * CHUNK}


def test_the_real_app_bounds_file_uploads(tiny_model_dir, isolated_home, monkeypatch):
    from tests.unit.service_app import Server

    monkeypatch.setenv("TUNESERVE_UI", "0")
    monkeypatch.setenv("TUNESERVE_JOBS_MAX_UPLOAD_MB", "1")
    server = Server(tiny_model_dir)
    try:
        app = server.http.app
        status, body, pulled = _call(app, _multipart_chunks(64 << 20), headers=[])
        assert status == 413, body
        assert pulled <= 1_000_000 + MULTIPART_SLACK + CHUNK + 1024
    finally:
        server.close()
