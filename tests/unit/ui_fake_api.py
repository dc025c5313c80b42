"""A fake tuneserve API for the UI's fast unit tests (the real server is tested in
tests/integration/test_ui_browser.py).

It speaks the same shapes as the service: OpenAI model list, streamed chat chunks with
usage, the OpenAI error envelope, the adapter registry with an admin key, files with a
line-numbered validation report, and fine-tuning jobs whose events carry the loss.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

BASE = "base-model"
ADMIN_KEY = "admin-secret"


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error"):
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def build_fake_api() -> FastAPI:
    app = FastAPI()
    state: dict[str, Any] = {
        "adapters": {"docker": {"name": "docker", "base_model": BASE, "rank": 8}},
        "jobs": {},
        "polls": {},
    }

    def admin_refusal(request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth:
            return _error(401, "missing API key", "invalid_api_key", "authentication_error")
        if auth != f"Bearer {ADMIN_KEY}":
            return _error(403, "an admin key is required", "insufficient_permissions")
        return None

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": BASE, "object": "model", "owned_by": "tuneserve", "created": 1}]
        data += [
            {"id": name, "object": "model", "parent": BASE, "created": 2, "owned_by": "tuneserve"}
            for name in state["adapters"]
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        if model != BASE and model not in state["adapters"]:
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")
        prompt = body["messages"][-1]["content"]
        words = f"{model} answers: {prompt}".split()[: body.get("max_tokens", 64)]
        if not body.get("stream"):
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": " ".join(words)},
                    }
                ],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": len(words),
                    "total_tokens": 3 + len(words),
                },
            }

        async def events():
            for index, word in enumerate(words):
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                if index == len(words) - 1:
                    chunk["choices"][0]["finish_reason"] = "stop"
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.005)
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 9}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/adapters")
    async def adapters() -> dict:
        return {"object": "list", "data": list(state["adapters"].values())}

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        if (refusal := admin_refusal(request)) is not None:
            return refusal
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            name, upload = form.get("name"), form.get("file")
            if not str(upload.filename).endswith((".zip", ".tar.gz")):
                return _error(400, "not a .zip or .tar.gz archive", "adapter_rejected")
            state["adapters"][name] = {
                "name": name,
                "base_model": BASE,
                "rank": 8,
                "source": "upload",
            }
            return JSONResponse(state["adapters"][name], status_code=201)
        body = await request.json()
        if not body.get("path", "").startswith("/ok"):
            return _error(
                400,
                f"adapter folder {body.get('path')} has no adapter_config.json",
                "adapter_rejected",
            )
        state["adapters"][body["name"]] = {"name": body["name"], "base_model": BASE, "rank": 8}
        return state["adapters"][body["name"]]

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str, request: Request):
        if (refusal := admin_refusal(request)) is not None:
            return refusal
        if name not in state["adapters"]:
            return _error(404, f"adapter '{name}' is not registered", "not_found")
        del state["adapters"][name]
        return {"id": name, "deleted": True}

    @app.post("/v1/files")
    async def upload(file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
        text = (await file.read()).decode()
        bad = [(i, why) for i, line in enumerate(text.splitlines(), 1) if (why := _bad_row(line))]
        if bad:
            report = "\n".join(f"line {i}: {why}" for i, why in bad)
            return _error(400, f"{len(bad)} invalid row(s):\n{report}", "invalid_file")
        rows = len(text.splitlines())
        return {
            "id": "file-1",
            "object": "file",
            "filename": file.filename,
            "bytes": len(text),
            "purpose": purpose,
            "rows": rows,
        }

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        body = await request.json()
        if body["model"] != BASE:
            return _error(404, f"base model {body['model']} is not served", "model_not_found")
        job = {
            "id": "ftjob-1",
            "object": "fine_tuning.job",
            "model": BASE,
            "status": "queued",
            "training_file": body["training_file"],
            "request": body,
        }
        state["jobs"][job["id"]] = job
        state["polls"][job["id"]] = 0
        return job

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str):
        job = state["jobs"].get(job_id)
        if job is None:
            return _error(404, f"no job {job_id}", "not_found")
        state["polls"][job_id] += 1
        if state["polls"][job_id] >= 3:
            suffix = job["request"].get("suffix", "x")
            job.update(status="succeeded", fine_tuned_model=f"ft:{BASE}:{suffix}:{job_id}")
            state["adapters"][job["fine_tuned_model"]] = {"name": job["fine_tuned_model"]}
        else:
            job["status"] = "running"
        return job

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str):
        steps = min(state["polls"].get(job_id, 0) * 2, 6)
        events = [
            {
                "id": f"ev-{s}",
                "created_at": int(time.time()),
                "type": "metrics",
                "message": f"Step {s}/6",
                "data": {"step": s, "total_steps": 6, "train_loss": 3.0 / s},
            }
            for s in range(1, steps + 1)
        ]
        return {"object": "list", "data": list(reversed(events))}

    @app.get("/reports")
    async def reports():
        item = {
            "id": "docker-commands-20260101T000000Z",
            "object": "evaluation.report",
            "suite": "docker-commands",
            "started_at": "2026-01-01T00:00:00+00:00",
            "models": [BASE, "docker"],
            "regressed": False,
            "headline": ["docker beats base on exact_match"],
            "files": ["report.md"],
            "url": "/reports/docker-commands-20260101T000000Z/report.html",
        }
        return {"object": "list", "data": [item]}

    @app.get("/reports/{report_id}/{filename}")
    async def report_file(report_id: str, filename: str):
        if report_id != "docker-commands-20260101T000000Z":
            return _error(404, f"no report {report_id}", "not_found")
        return PlainTextResponse("# docker-commands\n\n| model | exact_match |\n")

    return app


def _bad_row(line: str) -> str | None:
    """Why a chat JSONL line is invalid (None when it is fine)."""
    try:
        record = json.loads(line)
    except ValueError:
        return "not a chat record (invalid JSON)"
    if isinstance(record, list):  # a JSON array file (alpaca): accepted as a whole
        return None
    if not isinstance(record, dict) or "messages" not in record:
        return "not a chat record (no messages)"
    roles = [m.get("role") for m in record["messages"] if isinstance(m, dict)]
    if roles and "assistant" not in roles:
        return "no assistant turn"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_fake_api() -> Iterator[str]:
    """Serve the fake API on a free loopback port in a thread; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(build_fake_api(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
