"""Compare-tab logic: message building, concurrent streams, stats and snippets."""

from __future__ import annotations

import ast
import shlex

import pytest

from tests.unit.ui_service import ADAPTER, BASE, USER_KEY, running_service
from ui.client import SamplingParams, StreamEvent, TuneserveClient
from ui.compare import (
    SnippetRequest,
    build_messages,
    compare_stream,
    curl_snippet,
    format_stats,
    openai_snippet,
)


def test_build_messages_uses_system_history_and_gradio_content_parts():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
    ]
    assert build_messages(" be brief ", history, "next") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "next"},
    ]
    assert build_messages("", None, "q") == [{"role": "user", "content": "q"}]


def test_format_stats():
    event = StreamEvent(done=True, ttft_s=0.5, total_s=2.5, completion_tokens=21)
    assert format_stats(event) == "TTFT 0.50 s · 10.0 tokens/s · 21 tokens · 2.5 s"


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("ui-home")) as url:
        yield url


async def test_compare_streams_models_side_by_side_and_isolates_errors(api):
    client = TuneserveClient(api, USER_KEY)
    models = [BASE, ADAPTER, "missing", None]
    messages = [build_messages("", [], "list containers") if m else None for m in models]
    snapshots = [
        [(s.text, s.error, s.running, s.stats) for s in states]
        async for states in compare_stream(client, models, messages, SamplingParams())
    ]
    final = snapshots[-1]
    # The fake engine answers "docker ps", naming the adapter a request was routed to.
    assert final[0][0] == "docker ps"
    assert final[1][0] == f"docker ps ({ADAPTER})"
    assert final[0][3].completion_tokens > 0 and final[1][3].ttft_s is not None
    assert "model_not_found" in final[2][1] and "`missing` does not exist" in final[2][1]
    assert final[3] == ("", None, False, None)
    assert not any(slot[2] for slot in final)
    assert len(snapshots) >= 2  # at least the start and the end are shown


def test_snippets_are_runnable_shapes():
    messages = [{"role": "user", "content": 'it\'s "quoted"'}]
    params = SamplingParams(temperature=0.2, top_p=0.9, max_tokens=16, seed=7)
    curl = curl_snippet("http://h:8000/", "docker", messages, params)
    tokens = shlex.split(curl.replace("\\\n", " "))
    assert tokens[:3] == ["curl", "-N", "http://h:8000/v1/chat/completions"]
    body = tokens[tokens.index("-d") + 1]
    assert '"model": "docker"' in body and '"seed": 7' in body
    python = openai_snippet("http://h:8000", "docker", messages, params)
    ast.parse(python)  # valid Python
    assert "base_url='http://h:8000/v1'" in python and "seed=7" in python
    both = SnippetRequest("http://h", ["a", "b"], [messages, messages], params).render("curl")
    assert both.count("curl -N") == 2
