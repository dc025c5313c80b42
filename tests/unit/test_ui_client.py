"""The UI's client against the real service app (fake engine): OpenAI error objects become
readable sentences, streams carry text, usage and timing (tests/unit/ui_service.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.unit.ui_service import ADAPTER, ADMIN_KEY, BASE, USER_KEY, running_service
from ui.client import SamplingParams, ServerError, TuneserveClient, error_from_response


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("ui-home")) as url:
        yield url


async def _stream(client: TuneserveClient, model: str, params: SamplingParams):
    messages = [{"role": "user", "content": "list containers"}]
    return [event async for event in client.stream_chat(model, messages, params)]


async def test_openai_error_object_becomes_readable_message(api):
    with pytest.raises(ServerError) as info:
        await _stream(TuneserveClient(api, USER_KEY), "nope", SamplingParams())
    text = str(info.value)
    assert "HTTP 404" in text and "model_not_found" in text and "`nope` does not exist" in text
    assert info.value.status == 404 and not info.value.not_available
    assert "Traceback" not in text


async def test_missing_route_reads_not_available(api):
    with pytest.raises(ServerError) as info:
        await TuneserveClient(api + "/elsewhere", USER_KEY).list_jobs()
    assert info.value.not_available
    assert str(info.value) == "GET /elsewhere/v1/fine_tuning/jobs is not available on this server."


async def test_wrong_key_gets_the_auth_hint(api):
    with pytest.raises(ServerError) as info:
        await TuneserveClient(api, "wrong").list_models()
    assert "HTTP 401" in str(info.value) and "invalid API key" in str(info.value)
    assert "Check the API key" in str(info.value)


def test_plain_fastapi_detail_and_html_error_pages():
    request = httpx.Request("DELETE", "http://x/v1/adapters/a")
    err = error_from_response(httpx.Response(401, json={"detail": "bad key"}, request=request))
    assert "HTTP 401" in str(err) and "bad key" in str(err) and "admin key" in str(err)
    request = httpx.Request("GET", "http://x/v1/models")
    response = httpx.Response(502, text="<html><body>Bad gateway</body></html>", request=request)
    err = error_from_response(response)
    assert err.message == "Bad Gateway" and "<html>" not in str(err)


async def test_unreachable_server_is_one_sentence():
    for call in ("list_models", "list_adapters"):  # the SDK's path and the httpx one
        client = TuneserveClient("http://127.0.0.1:9", None, timeout=2)
        with pytest.raises(ServerError) as info:
            await getattr(client, call)()
        assert str(info.value).startswith("Cannot reach the server at http://127.0.0.1:9")
        assert info.value.status is None


def test_base_url_normalisation():
    assert TuneserveClient("localhost:8000/v1/").base_url == "http://localhost:8000"
    with pytest.raises(ServerError, match="No server URL"):
        TuneserveClient("  ")


async def test_admin_calls_send_only_the_admin_key_and_quote_names(api):
    client = TuneserveClient(api, USER_KEY)
    with pytest.raises(ServerError) as info:
        await client.delete_adapter("a b?c#d", admin_key=ADMIN_KEY)
    # Quoted: the server saw the whole name, not a query string or a fragment.
    assert info.value.status == 404 and "no adapter named 'a b?c#d'" in str(info.value)
    with pytest.raises(ServerError) as info:
        await client.delete_adapter(ADAPTER, admin_key="")
    assert info.value.status == 401  # never falls back to the user key (that would be 403)


async def test_stream_collects_text_usage_and_timing(api):
    client = TuneserveClient(api, USER_KEY)
    events = await _stream(client, BASE, SamplingParams(max_tokens=64, seed=3))
    assert "".join(e.delta for e in events) == "docker ps"
    final = events[-1]
    assert final.done and final.completion_tokens == len(events) - 1
    assert final.ttft_s is not None and final.total_s >= final.ttft_s
    assert final.tokens_per_s is not None and final.tokens_per_s > 0
    # max_tokens reaches the server: one token, cut for length.
    events = await _stream(client, ADAPTER, SamplingParams(max_tokens=1))
    assert events[-1].completion_tokens == 1 and events[-1].finish_reason == "length"


async def test_error_inside_stream_is_raised_readably(monkeypatch):
    """The server reports an error inside a started stream (no fake engine fails midway,
    so this one stream is canned)."""
    import httpx2

    body = 'data: {"error": {"message": "engine died", "code": 500}}\n\n'

    def handler(request):
        return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})

    real = openai.AsyncOpenAI

    def canned(**kwargs):
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        return real(http_client=http, **kwargs)

    monkeypatch.setattr(openai, "AsyncOpenAI", canned)
    with pytest.raises(ServerError, match="The server stopped the answer: engine died") as info:
        await _stream(TuneserveClient("http://server", "k"), "m", SamplingParams())
    assert info.value.code == "500"
