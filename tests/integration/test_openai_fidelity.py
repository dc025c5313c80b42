"""OpenAI API fidelity on the real Gemma 3 270M base and real vLLM (xgrammar structured
outputs on CPU), through the official ``openai`` SDK: ``response_format`` json_object and
json_schema, vLLM's regex/choice/grammar extras, forced tool calls streamed and not,
``logit_bias``, and unsupported fields refused by name (docs/api.md).

Requests of one kind go out together so the engine batches them; small ``max_tokens``."""

from __future__ import annotations

import inspect
import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

SUBJECTS = ["a cat", "a city", "a car", "a book", "a song", "a planet", "a tree", "a chair",
            "a river", "a computer"]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "kind": {"enum": ["animal", "place", "thing"]}},
    "required": ["name", "age", "kind"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 16},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "maxLength": 16}},
                                          "required": ["city"],
                                          "additionalProperties": False}}},
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def client(live_server):
    return live_server.openai(timeout=300, max_retries=0)


def _all(fn, items) -> list:
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def _ask(subject: str) -> list[dict]:
    return [{"role": "user", "content": f"Describe {subject} as JSON."}]


def test_json_object_replies_parse(client, live_server):
    # json_object bounds the shape, not the length: left alone, the pretrained base writes
    # objects longer than any small max_tokens (measured: 5 of 10 cut at 96 tokens). One
    # example turn keeps its objects short, as a user would prompt it.
    example = [{"role": "user", "content": "Describe a lamp as JSON."},
               {"role": "assistant", "content": '{"name":"lamp","kind":"thing"}'}]

    def one(subject):
        return client.chat.completions.create(
            model=live_server.model_id, messages=example + _ask(subject), max_tokens=64,
            temperature=0, response_format={"type": "json_object"})

    for subject, reply in zip(SUBJECTS, _all(one, SUBJECTS), strict=True):
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop", (subject, text)
        assert isinstance(json.loads(text), dict), (subject, text)


def test_json_schema_replies_validate(client, live_server):
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "entity", "schema": PERSON, "strict": True}}

    def one(subject):
        return client.chat.completions.create(
            model=live_server.model_id, messages=_ask(subject), max_tokens=48,
            temperature=0, response_format=response_format)

    for subject, reply in zip(SUBJECTS, _all(one, SUBJECTS), strict=True):
        text = reply.choices[0].message.content
        assert not list(jsonschema.Draft202012Validator(PERSON).iter_errors(json.loads(text))), \
            (subject, text)


def test_vllm_structured_output_extras_on_completions(client, live_server):
    def one(constraint):
        return client.completions.create(
            model=live_server.model_id, prompt="The answer is", max_tokens=16, temperature=0,
            extra_body={"structured_outputs": constraint}).choices[0].text

    choice, regex, grammar = _all(one, [{"choice": ["yes", "no", "maybe"]},
                                        {"regex": "[0-9]{3}-[a-z]{2}"},
                                        {"grammar": 'root ::= "ab" ("c" | "d") "."'}])
    assert choice in ("yes", "no", "maybe")
    assert len(regex) == 6 and regex[:3].isdigit() and regex[3] == "-" and regex[4:].isalpha()
    assert grammar in ("abc.", "abd.")


def _tool_call_args(reply, stream: bool) -> tuple[str, str, str]:
    """(finish_reason, name, arguments) of the one tool call of a reply or of a stream."""
    if not stream:
        choice = reply.choices[0]
        [call] = choice.message.tool_calls
        assert call.id and call.type == "function"
        return choice.finish_reason, call.function.name, call.function.arguments
    calls: dict[int, dict] = {}
    finish = None
    for chunk in reply:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not delta.content, delta  # a forced call never streams as text
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or part.id
            if part.function and part.function.name:
                call["name"] += part.function.name
            if part.function and part.function.arguments:
                call["arguments"] += part.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert list(calls) == [0] and calls[0]["id"], calls
    return finish, calls[0]["name"], calls[0]["arguments"]


def test_forced_tool_calls_validate(client, live_server):
    # Over 10 prompts: tool_choice "required" and a named function, streamed and not
    # (40 requests, sent together so the engine batches them).
    named = {"type": "function", "function": {"name": "get_weather"}}
    cases = [(subject, choice, stream) for subject in SUBJECTS
             for choice in ("required", named) for stream in (False, True)]

    def one(case):
        subject, choice, stream = case
        reply = client.chat.completions.create(
            model=live_server.model_id, max_tokens=64, temperature=0, tools=TOOLS,
            tool_choice=choice, stream=stream,
            messages=[{"role": "user", "content": f"What is the weather near {subject}?"}])
        return _tool_call_args(reply, stream)

    for case, (finish, name, arguments) in zip(cases, _all(one, cases), strict=True):
        assert finish == "tool_calls", (case, finish)
        if case[1] is named:
            assert name == "get_weather", case
        errors = list(jsonschema.Draft202012Validator(PARAMETERS[name]).iter_errors(
            json.loads(arguments)))
        assert not errors, (case, arguments, errors)


def test_tool_results_in_the_conversation_then_text(client, live_server):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo","days":1,'
                                                             '"unit":"celsius"}'}}
    reply = client.chat.completions.create(
        model=live_server.model_id, max_tokens=8, temperature=0, tools=TOOLS,
        tool_choice="none", messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3 degrees, snow"}])
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_logit_bias_bans_a_token(client, live_server):
    def ids(**kw):
        reply = client.chat.completions.create(
            model=live_server.model_id, messages=_ask("a dog"), max_tokens=24, temperature=0,
            extra_body={"return_token_ids": True}, **kw)
        return reply.choices[0].model_extra["token_ids"]

    free = ids()
    banned = max(set(free), key=free.count)  # greedy would write it
    assert banned not in ids(logit_bias={str(banned): -100})


UNSUPPORTED = [("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["audio"]),
               ("reasoning_effort", "high"), ("prediction", {"type": "content", "content": "x"}),
               ("verbosity", "low"), ("web_search_options", {}),
               ("functions", [{"name": "f", "parameters": {}}]), ("function_call", "auto")]


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED + [("not_an_openai_field", 1)])
def test_unsupported_fields_are_400_naming_them(client, live_server, field, value):
    known = field in inspect.signature(client.chat.completions.create).parameters
    kwargs = {field: value} if known else {"extra_body": {field: value}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=live_server.model_id, max_tokens=2,
                                       messages=_ask("a dog"), **kwargs)
    assert caught.value.param == field, caught.value.body
