"""Shared helpers of the reliability suite (tests/integration/test_reliability_*.py)."""

from __future__ import annotations

import time

import httpx

from tests.integration.conftest import metrics_text

# What a leaked Python stack trace looks like in a response body.
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")


def assert_error(response: httpx.Response, status: int | tuple[int, ...],
                 code: str | None = None) -> dict:
    """``response`` is the OpenAI error envelope with ``status``; returns its ``error``."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and len(error["message"]) < 20_000, error
    assert not any(marker in response.text for marker in TRACE_MARKERS), response.text[:500]
    if code is not None:
        assert error["code"] == code, error
    return error


def metric(base_url: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) on ``/metrics``."""
    text = metrics_text(base_url)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key = line.split("{", 1)[0].split(" ", 1)[0]
        if key == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_idle(base_url: str, timeout_s: float = 30.0) -> bool:
    """Wait until neither our in-flight gauge nor vLLM's running/waiting gauges count a
    request; True when that happened within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (metric(base_url, "tuneserve_requests_in_flight") == 0
                and metric(base_url, "vllm:num_requests_running") == 0
                and metric(base_url, "vllm:num_requests_waiting") == 0):
            return True
        time.sleep(0.25)
    return False


def chat_ok(server, model: str | None = None, *, max_tokens: int = 2) -> dict:
    """One normal chat completion with the user key; asserts 200 and returns the body."""
    with server.http(timeout=120) as client:
        response = client.post("/v1/chat/completions", json={
            "model": model or server.model_id, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}]})
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["choices"][0]["message"]["content"] is not None
    return body
