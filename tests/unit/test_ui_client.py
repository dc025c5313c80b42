"""The UI's HTTP client: OpenAI error objects become readable sentences, streams parse."""

from __future__ import annotations

import json

import httpx
import pytest

from ui.client import SamplingParams, ServerError, TuneserveClient, error_from_response


def _client(handler) -> TuneserveClient:
    return TuneserveClient("http://server", "k", transport=httpx.MockTransport(handler))


def _error(status: int, message: str, code: str | None = None) -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": code}}
    return httpx.Response(status, json=body)


async def test_openai_error_object_becomes_readable_message():
    client = _client(
        lambda request: _error(404, "The model `nope` does not exist.", "model_not_found")
    )
    with pytest.raises(ServerError) as info:
        await client.list_models()
    text = str(info.value)
    assert "HTTP 404" in text and "model_not_found" in text and "`nope` does not exist" in text
    assert not info.value.not_available
    assert "Traceback" not in text


async def test_missing_route_reads_not_available():
    client = _client(lambda request: _error(404, "Not Found", "not_found"))
    with pytest.raises(ServerError) as info:
        await client.list_jobs()
    assert info.value.not_available
    assert str(info.value) == "GET /v1/fine_tuning/jobs is not available on this server."


async def test_plain_fastapi_detail_and_auth_hint():
    client = _client(lambda request: httpx.Response(401, json={"detail": "bad key"}))
    with pytest.raises(ServerError) as info:
        await client.delete_adapter("a/b", admin_key=None)
    assert "HTTP 401" in str(info.value) and "bad key" in str(info.value)
    assert "admin key" in str(info.value)


async def test_unreachable_server_is_one_sentence():
    client = TuneserveClient("http://127.0.0.1:9", None, timeout=2)
    with pytest.raises(ServerError) as info:
        await client.list_models()
    assert str(info.value).startswith("Cannot reach the server at http://127.0.0.1:9")
    assert info.value.status is None


def test_base_url_normalisation():
    assert TuneserveClient("localhost:8000/v1/").base_url == "http://localhost:8000"
    with pytest.raises(ServerError, match="No server URL"):
        TuneserveClient("  ")


async def test_admin_calls_send_only_the_admin_key_and_quote_names():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["path"] = request.url.raw_path.decode()
        return httpx.Response(200, json={"deleted": True})

    await _client(handler).delete_adapter("../etc", admin_key="adm")
    assert seen == {"auth": "Bearer adm", "path": "/v1/adapters/..%2Fetc"}
    await _client(handler).delete_adapter("x", admin_key="")
    assert seen["auth"] is None  # never falls back to the user key for admin actions


async def test_stream_collects_text_usage_and_timing():
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "docker "}}]},
        {"choices": [{"index": 0, "delta": {"content": "ps"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"completion_tokens": 7}},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        assert sent["seed"] == 3 and sent["max_tokens"] == 5
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    events = [
        e
        async for e in _client(handler).stream_chat(
            "m", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=5, seed=3)
        )
    ]
    assert "".join(e.delta for e in events) == "docker ps"
    final = events[-1]
    assert final.done and final.completion_tokens == 7 and final.finish_reason == "stop"
    assert final.ttft_s is not None and final.total_s >= final.ttft_s
    assert final.tokens_per_s is not None and final.tokens_per_s > 0


async def test_error_inside_stream_is_raised_readably():
    body = 'data: {"error": {"message": "engine died", "code": 500}}\n\n'
    client = _client(lambda request: httpx.Response(200, text=body))
    with pytest.raises(ServerError, match="engine died"):
        async for _ in client.stream_chat("m", [], SamplingParams()):
            pass


async def test_stream_refusal_before_first_token():
    client = _client(lambda request: _error(400, "max_tokens too large", None))
    with pytest.raises(ServerError) as info:
        async for _ in client.stream_chat("m", [], SamplingParams()):
            pass
    assert info.value.status == 400 and "max_tokens too large" in str(info.value)


def test_html_error_pages_are_not_dumped():
    request = httpx.Request("GET", "http://x/v1/models")
    response = httpx.Response(502, text="<html><body>Bad gateway</body></html>", request=request)
    err = error_from_response(response)
    assert err.message == "Bad Gateway" and "<html>" not in str(err)
