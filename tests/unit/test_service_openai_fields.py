"""Every OpenAI request field is honoured, informational or refused by name (docs/api.md),
on the HTTP layer with a fake engine: what reaches vLLM's SamplingParams, and how replies
become tool calls. The same features run on real vLLM + Gemma in
tests/integration/test_openai_fidelity.py."""

from __future__ import annotations

import json

import pytest

from tests.unit import test_service_api
from tests.unit.test_service_api import _assert_error, _chat
from training.tool_format import render_tool_call

make_client = test_service_api.make_client  # the shared fixture: the app on a fake engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
CALL = render_tool_call("get_weather", {"city": "Oslo"})

# (field, value) pairs that would change the answer on OpenAI and are not implemented.
REFUSED = [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("prediction", {"type": "content", "content": "x"}), ("reasoning_effort", "low"),
    ("verbosity", "low"), ("web_search_options", {}), ("moderation", {"model": "m"}),
    ("some_future_field", 1), ("guided_json", {}), ("best_of_n", 2),
]
INFORMATIONAL = {"user": "u1", "metadata": {"k": "v"}, "store": False,
                 "safety_identifier": "s", "prompt_cache_key": "k", "service_tier": "auto",
                 "prompt_cache_retention": "24h", "modalities": ["text"], "audio": None,
                 "parallel_tool_calls": False, "stream_options": None}


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_unsupported_chat_fields_are_400_naming_them(make_client, field, value):
    client = make_client()
    error = _assert_error(client.post("/v1/chat/completions", json=_chat(**{field: value})),
                          400, param=field)
    assert field in error["message"] or "unknown parameter" in error["message"]
    assert not client.engine.calls


@pytest.mark.parametrize(("body", "param"), [
    ({"suffix": "x"}, "suffix"), ({"best_of": 3}, "best_of"), ({"functions": []}, "functions"),
    ({"whatever": True}, "whatever"), ({"stream_options": {"x": 1}}, "stream_options.x"),
])
def test_unsupported_completion_fields_are_400_naming_them(make_client, body, param):
    client = make_client()
    response = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", **body})
    _assert_error(response, 400, param=param)


def test_nested_unknown_fields_are_refused_by_path(make_client):
    client = make_client()
    messages = [{"role": "user", "content": "hi", "mood": "happy"}]
    _assert_error(client.post("/v1/chat/completions", json=_chat(messages=messages)), 400,
                  param="messages.0.mood")


def test_informational_fields_are_accepted(make_client):
    client = make_client()
    response = client.post("/v1/chat/completions", json=_chat(**INFORMATIONAL))
    assert response.status_code == 200, response.text


def test_logit_bias_reaches_sampling_params(make_client):
    client = make_client()
    for path, body in (("/v1/chat/completions", _chat()),
                       ("/v1/completions", {"model": "tiny", "prompt": "hi"})):
        response = client.post(path, json={**body, "logit_bias": {"5": -100, "7": 2.5}})
        assert response.status_code == 200, response.text
        assert client.engine.calls[-1][1].logit_bias == {5: -100.0, 7: 2.5}


@pytest.mark.parametrize("bias", [{"abc": 1}, {"5": -101}, {"99999999": 1}, {"-1": 1}])
def test_bad_logit_bias_is_400(make_client, bias):
    client = make_client()
    _assert_error(client.post("/v1/chat/completions", json=_chat(logit_bias=bias)), 400,
                  param="logit_bias")


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(("body", "expected"), [
    ({"response_format": {"type": "json_object"}}, {"json_object": True}),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": SCHEMA, "strict": True}}}, {"json": SCHEMA}),
    ({"structured_outputs": {"regex": "[a-z]+"}}, {"regex": "[a-z]+"}),
    # xgrammar validation turns a choice into its grammar, as vLLM's engine does.
    ({"structured_outputs": {"choice": ["yes", "no"]}}, {"grammar": 'root ::= "yes" | "no"'}),
    ({"structured_outputs": {"grammar": 'root ::= "a"'}}, {"grammar": 'root ::= "a"'}),
    ({"structured_outputs": {"json": SCHEMA}}, {"json": SCHEMA}),
    ({"response_format": {"type": "text"}}, None),
])
def test_structured_outputs_reach_sampling_params(make_client, body, expected):
    client = make_client()
    for path, base in (("/v1/chat/completions", _chat()),
                       ("/v1/completions", {"model": "tiny", "prompt": "hi"})):
        response = client.post(path, json={**base, **body})
        assert response.status_code == 200, response.text
        constraint = client.engine.calls[-1][1].structured_outputs
        if expected is None:
            assert constraint is None
        else:
            assert {k: getattr(constraint, k) for k in expected} == expected


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": 12}}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "(("}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"grammar": " "}}, "structured_outputs.grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"$schema": {"x": 1}}}}}, "response_format.json_schema.schema"),
    ({"structured_outputs": {"regex": "a", "disable_any_whitespace": True}},
     "structured_outputs.disable_any_whitespace"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
     "structured_outputs"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_structured_outputs_are_400(make_client, body, param):
    client = make_client()
    _assert_error(client.post("/v1/chat/completions", json=_chat(**body)), 400, param=param)


@pytest.mark.parametrize("choice", ["required",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_choice_constrains_to_a_call(make_client, choice):
    client = make_client(engine_kw={"reply": CALL, "max_model_len": 2048})
    response = client.post("/v1/chat/completions",
                           json=_chat(tools=[WEATHER, CLOCK], tool_choice=choice))
    assert response.status_code == 200, response.text
    schema = client.engine.calls[-1][1].structured_outputs.json
    options = schema.get("anyOf", [schema])
    names = [o["properties"]["name"]["const"] for o in options]
    assert names == (["get_weather", "get_time"] if choice == "required" else ["get_weather"])
    assert options[0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    choice0 = response.json()["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    assert choice0["message"]["content"] is None
    [call] = choice0["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    # The tools are in the prompt, in training's format.
    prompt = client.engine.tokenizer.decode(client.engine.calls[-1][0])
    assert '{"name":"get_weather","parameters":' in prompt


def test_auto_tool_choice_parses_a_call_or_returns_text(make_client):
    client = make_client(engine_kw={"reply": CALL, "max_model_len": 2048})
    body = _chat(tools=[WEATHER])
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert client.engine.calls[-1][1].structured_outputs is None  # auto is unconstrained
    # tool_choice none: the same reply is text.
    choice = client.post("/v1/chat/completions",
                         json={**body, "tool_choice": "none"}).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CALL}
    assert choice["finish_reason"] == "stop"  # the reply ended by itself


def _stream(client, body) -> list[dict]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streamed_tool_calls_use_openai_deltas(make_client):
    client = make_client(engine_kw={"reply": CALL, "max_model_len": 2048})
    chunks = _stream(client, _chat(tools=[WEATHER], tool_choice="required"))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any(d.get("content") for d in deltas)  # the call is never streamed as text
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_auto_text_streams_as_content(make_client):
    client = make_client(engine_kw={"max_model_len": 2048})  # replies "docker ps"
    chunks = _stream(client, _chat(tools=[WEATHER]))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "docker ps"
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 1


def test_tool_messages_in_the_conversation(make_client):
    client = make_client(engine_kw={"max_model_len": 2048})
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3C"},
    ]
    response = client.post("/v1/chat/completions", json=_chat(messages=messages, tools=[WEATHER]))
    assert response.status_code == 200, response.text
    prompt = client.engine.tokenizer.decode(client.engine.calls[-1][0])
    assert CALL in prompt and '{"tool_result":{"name":"get_weather","content":"3C"}}' in prompt


@pytest.mark.parametrize(("body", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "tool_call_id": "zz", "content": "x"}]}, "messages"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}],
      "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_are_400(make_client, body, param):
    client = make_client(engine_kw={"max_model_len": 2048})
    error = _assert_error(client.post("/v1/chat/completions", json=_chat(**body)), 400)
    assert (error["param"] or "").startswith(param), error
