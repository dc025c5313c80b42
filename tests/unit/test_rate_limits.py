"""Per-project rate limits: the token buckets on a fake clock, and the real app (fake
engine) with a keys file of two projects: OpenAI's x-ratelimit-* headers, 429 with
Retry-After under concurrent load, tokens charged after the answer, projects apart."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.rate_limits import RateLimiter
from service.settings import Settings
from tests.unit.service_app import _factory

KEY_A, KEY_B, ADMIN = "team-a-key-0123456789", "team-b-key-0123456789", "admin-key-0123456789"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_buckets_refill_continuously_and_tokens_are_charged_after():
    clock = Clock()
    limiter = RateLimiter(lambda project: {"a": (2, 100)}.get(project, (None, None)), clock)
    first = limiter.admit("a")
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-reset-requests"] == "30s"  # one request back every 30 s
    limiter.admit("a")
    with pytest.raises(Exception) as refused:
        limiter.admit("a")
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "30"
    clock.now += 30
    limiter.charge("a", 250)  # a long answer: the token bucket goes below zero
    with pytest.raises(Exception) as refused:
        limiter.admit("a")
    assert "tokens per minute" in refused.value.message
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.value.headers["Retry-After"] == str(int((150 + 1) * 60 / 100) + 1)
    for _ in range(5):
        assert limiter.admit("b") == {}  # no limits: never refused, no headers


@pytest.fixture
def client(tiny_model_dir, isolated_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESERVE_UI", "0")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({
        "admin": [ADMIN],
        "keys": [{"key": KEY_A, "project": "team-a"}, {"key": KEY_B, "project": "team-b"}],
        "projects": {"team-a": {"requests_per_minute": 5}, "team-b": {"tokens_per_minute": 10}},
    }))
    settings = Settings(base_model=str(tiny_model_dir), served_model_name="tiny",
                        api_keys_file=keys)
    with TestClient(build_app(settings, _factory({}, delay_s=0.05))) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client


def _chat(client, key: str):
    return client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "tiny", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "list containers"}]})


def test_request_limit_under_concurrent_load(client):
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: _chat(client, KEY_A), range(10)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (5, 5)
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == [0, 1, 2, 3, 4]
    for response in refused:
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-limit-requests"] == "5"
    # Another project's budget is its own; the admin (project "default") has no limit.
    assert _chat(client, KEY_B).status_code == 200
    assert _chat(client, ADMIN).status_code == 200
    assert "x-ratelimit-limit-requests" not in _chat(client, ADMIN).headers


def test_token_limit_counts_prompt_and_completion(client):
    first = _chat(client, KEY_B)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "10"
    used = first.json()["usage"]["total_tokens"]
    assert used > 10  # the prompt alone is over the budget: charged when the answer ends
    second = _chat(client, KEY_B)
    assert second.status_code == 429 and "tokens per minute" in second.json()["error"]["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
