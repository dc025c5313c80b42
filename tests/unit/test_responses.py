"""The minimal Responses API against the real app with the fake engine, through the
official SDK: text and messages in, instructions, max_output_tokens, streaming, and a 400
naming each field it does not implement. Real vLLM: tests/integration/test_service_openai.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def server(server_factory):
    return server_factory()


def _prompt(server) -> str:
    return server.engine.tokenizer.decode(server.engine.calls[-1][0])


def test_text_in_text_out_with_instructions(server):
    response = server.sdk.responses.create(model="tiny", input="list containers",
                                           instructions="Answer with one command.",
                                           metadata={"ticket": "7"})
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == "docker ps"
    assert response.output[0].role == "assistant" and response.metadata == {"ticket": "7"}
    assert "Answer with one command." in _prompt(server) and "list containers" in _prompt(server)
    chat = server.sdk.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Answer with one command."},
                                {"role": "user", "content": "list containers"}])
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens


def test_messages_and_max_output_tokens(server):
    response = server.sdk.responses.create(
        model="tiny", max_output_tokens=1,
        input=[{"role": "user", "content": "first"},
               {"role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
               {"role": "user", "content": [{"type": "input_text", "text": "second"}]}])
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 1
    prompt = _prompt(server)
    assert prompt.index("first") < prompt.index("answer") < prompt.index("second")


def test_streamed_events_add_up_to_the_response(server):
    events = list(server.sdk.responses.create(model="tiny", input="list containers",
                                              stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text == "docker ps"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "function", "name": "f", "parameters": {}}]),
    ("previous_response_id", "resp_1"),
    ("reasoning", {"effort": "low"}),
    ("top_logprobs", 2),
    ("background", True),
    ("include", ["message.output_text.logprobs"]),
    ("truncation", "auto"),
    ("conversation", "conv_1"),
    ("text", {"format": {"type": "json_object"}}),
])
def test_unimplemented_fields_are_refused_by_name(server, field, value):
    response = server.http.post("/v1/responses",
                                json={"model": "tiny", "input": "hi", field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].split(".")[0] == field


def test_unknown_model_is_a_404(server):
    response = server.http.post("/v1/responses", json={"model": "nope", "input": "hi"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"
