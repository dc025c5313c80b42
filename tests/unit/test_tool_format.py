"""training/tool_format.py: the one text format of tools, tool calls and tool results,
shared by serving and training."""

from __future__ import annotations

import json

import pytest

from training.chat_format import encode_for_training, render_prompt
from training.tool_format import (
    TOOLS_FOOTER,
    TOOLS_HEADER,
    parse_tool_calls,
    render_tool_call,
    render_tool_messages,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    {"role": "assistant", "content": "It is 18C and sunny."},
]


def test_plain_conversations_are_untouched():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render_tool_messages(messages) is messages


def test_tools_calls_and_results_render_in_the_documented_format():
    rendered = render_tool_messages(CONVERSATION, [WEATHER])
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "assistant"]
    system = rendered[0]["content"].splitlines()
    assert system[0] == TOOLS_HEADER and system[-1] == TOOLS_FOOTER
    assert json.loads(system[1]) == {"name": "get_weather", "description": "Weather in a city",
                                     "parameters": WEATHER["function"]["parameters"]}
    # The call is exactly what constrained decoding generates: compact JSON.
    assert rendered[2]["content"] == '{"name":"get_weather","arguments":{"city":"Paris"}}'
    assert rendered[3]["content"] == \
        '{"tool_result":{"name":"get_weather","content":"18C, sunny"}}'


def test_system_prompt_keeps_its_text_and_tool_results_share_a_user_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18C"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "25C"}]},
        {"role": "user", "content": "Which is warmer?"},
    ]
    rendered = render_tool_messages(messages, [WEATHER])
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\n" + TOOLS_HEADER)
    assert rendered[2]["content"].splitlines() == [
        "Checking.", render_tool_call("get_weather", {"city": "Paris"}),
        render_tool_call("get_weather", {"city": "Rome"})]
    assert rendered[3]["content"].splitlines() == [
        '{"tool_result":{"name":"get_weather","content":"18C"}}',
        '{"tool_result":{"name":"get_weather","content":"25C"}}', "", "Which is warmer?"]


@pytest.mark.parametrize("messages", [
    [{"role": "tool", "tool_call_id": "nope", "content": "x"}],
    [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {
        "name": "f", "arguments": "not json"}}]}],
    [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {
        "name": "f", "arguments": "[1]"}}]}],
])
def test_malformed_tool_messages_raise(messages):
    with pytest.raises(ValueError):
        render_tool_messages(messages, [WEATHER])


def test_parse_tool_calls_accepts_only_whole_replies_of_declared_functions():
    names = {"get_weather"}
    call = render_tool_call("get_weather", {"city": "Oslo"})
    assert parse_tool_calls(call, names) == [("get_weather", {"city": "Oslo"})]
    assert parse_tool_calls(f" {call}\n{call}\n", names) == [("get_weather", {"city": "Oslo"})] * 2
    for text in ("It is sunny.", f"Sure: {call}", '{"name":"other","arguments":{}}',
                 '{"name":"get_weather","arguments":{},"x":1}', '{"name":"get_weather"', ""):
        assert parse_tool_calls(text, names) is None, text


def test_training_and_serving_render_tools_identically(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = encode_for_training(tokenizer, CONVERSATION[:2], [WEATHER])
    prompt = render_prompt(tokenizer, CONVERSATION[:1], tools=[WEATHER])
    full = tokenizer.decode(encoded["input_ids"])
    assert full.startswith(prompt) and TOOLS_HEADER in prompt
    # The trained completion is the call the server constrains generation to.
    completion = [t for t, m in zip(encoded["input_ids"], encoded["completion_mask"],
                                    strict=True) if m]
    assert tokenizer.decode(completion).startswith(
        '{"name":"get_weather","arguments":{"city":"Paris"}}')
