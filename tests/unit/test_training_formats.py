"""Dataset formats as users bring them, and the multi-turn loss (every weighted turn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import load_rows
from training.formats import FormatOptions, to_row

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Answer with a command."},
        {"from": "human", "value": "List containers"},
        {"from": "gpt", "value": "docker ps"},
    ]
}
EXPECTED = [
    {"role": "system", "content": "Answer with a command."},
    {"role": "user", "content": "List containers"},
    {"role": "assistant", "content": "docker ps"},
]


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_sharegpt_is_detected_and_mapped(tmp_path):
    report = load_rows(_jsonl(tmp_path / "s.jsonl", [SHAREGPT, {"conversations": "x"}]))
    assert report.format == "sharegpt"
    assert report.rows == [{"messages": EXPECTED}]
    assert "'conversations' must be a list" in report.errors[0].reason


def test_axolotl_chat_template_with_field_messages_and_mappings():
    options = FormatOptions(
        field_messages="conversations",
        message_property_mappings={"role": "from", "content": "value"},
    )
    assert to_row(SHAREGPT, "chat_template", options) == {"messages": EXPECTED}
    # A custom roles map replaces the defaults: "bot" is the assistant here.
    custom = FormatOptions(
        field_messages="dialog",
        message_property_mappings={"role": "speaker", "content": "text"},
        roles={"user": ["customer"], "assistant": ["bot"]},
        message_field_training="train",
    )
    record = {
        "dialog": [
            {"speaker": "customer", "text": "hi"},
            {"speaker": "bot", "text": "hello", "train": False},
            {"speaker": "customer", "text": "bye"},
            {"speaker": "bot", "text": "ciao", "train": True},
        ]
    }
    row = to_row(record, "chat_template", custom)
    assert [m.get("weight") for m in row["messages"]] == [None, 0, None, 1]
    with pytest.raises(ValueError, match="unknown role 'human'"):
        to_row(
            SHAREGPT | {"conversations": [{"speaker": "human", "text": "x"}]},
            "chat_template",
            FormatOptions(
                field_messages="conversations",
                message_property_mappings={"role": "speaker", "content": "text"},
                roles={"user": ["customer"]},
            ),
        )


def test_llama_factory_alpaca_keeps_system_and_history():
    record = {
        "instruction": "And the images?",
        "input": "",
        "output": "docker images",
        "system": "Answer with a command.",
        "history": [["List containers", "docker ps"]],
    }
    assert to_row(record, "alpaca")["messages"] == [
        {"role": "system", "content": "Answer with a command."},
        {"role": "user", "content": "List containers"},
        {"role": "assistant", "content": "docker ps"},
        {"role": "user", "content": "And the images?"},
        {"role": "assistant", "content": "docker images"},
    ]
    with pytest.raises(ValueError, match="history item 0"):
        to_row({**record, "history": [["only one"]]}, "alpaca")


def test_llama_factory_sharegpt_variant_with_system_field():
    record = {"conversations": SHAREGPT["conversations"][1:], "system": "Answer with a command."}
    assert to_row(record, "sharegpt") == {"messages": EXPECTED}


def test_openai_weight_is_kept_and_checked():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "weight": 0},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "weight": 1},
    ]
    assert to_row({"messages": messages}, "chat")["messages"][1]["weight"] == 0
    for bad, reason in [
        ({**messages[1], "weight": 0.5}, "weight must be 0 or 1"),
        ({**messages[0], "weight": 1}, "only allowed on assistant"),
    ]:
        with pytest.raises(ValueError, match=reason):
            to_row(
                {
                    "messages": [
                        bad if m is messages[1] or m is messages[0] and bad["role"] == "user" else m
                        for m in messages
                    ]
                },
                "chat",
            )
    all_zero = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in messages]
    with pytest.raises(ValueError, match="nothing to train"):
        to_row({"messages": all_zero}, "chat")


@pytest.mark.parametrize(
    ("record", "fmt", "named"),
    [
        ({"messages": EXPECTED, "id": 3}, "chat", "'id'"),
        ({"messages": [{**EXPECTED[1], "name": "bob"}, EXPECTED[2]]}, "chat", "'name'"),
        ({**SHAREGPT, "source": "x"}, "sharegpt", "'source'"),
        ({"instruction": "a", "output": "b", "category": "c"}, "alpaca", "'category'"),
        ({"prompt": "a", "completion": "b", "meta": 1}, "prompt_completion", "'meta'"),
        ({"text": "a", "url": "u"}, "completion", "'url'"),
        ({"segments": [{"text": "a", "label": True, "w": 1}]}, "input_output", "'w'"),
    ],
)
def test_a_field_not_understood_is_an_error_naming_it(record, fmt, named):
    with pytest.raises(ValueError, match=named):
        to_row(record, fmt)


def test_ignore_fields_leaves_named_columns_out():
    row = to_row({"messages": EXPECTED, "id": 3}, "chat", FormatOptions(ignore_fields=("id",)))
    assert row == {"messages": EXPECTED}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "4 C, rain"},
    {"role": "assistant", "content": "4 degrees and rain in Oslo."},
]


def test_openai_tool_rows_are_kept_and_checked():
    row = to_row({"messages": TOOL_CONVERSATION, "tools": [WEATHER]}, "chat")
    assert row == {"messages": TOOL_CONVERSATION, "tools": [WEATHER]}
    orphan = [TOOL_CONVERSATION[0], {"role": "tool", "tool_call_id": "x", "content": "?"},
              TOOL_CONVERSATION[3]]
    bad_call = [TOOL_CONVERSATION[0], {"role": "assistant", "tool_calls": [{"id": "1"}]},
                *TOOL_CONVERSATION[2:]]
    for record, reason in (({"messages": orphan, "tools": [WEATHER]}, "unknown tool_call_id"),
                           ({"messages": bad_call, "tools": [WEATHER]}, "malformed tool call"),
                           ({"messages": TOOL_CONVERSATION, "tools": "x"}, "list of tool"),
                           ({"messages": TOOL_CONVERSATION, "functions": []}, "deprecated"),
                           ({"messages": TOOL_CONVERSATION, "parallel_tool_calls": True},
                            "parallel_tool_calls")):
        with pytest.raises(ValueError, match=reason):
            to_row(record, "chat")
    with pytest.raises(ValueError, match="OpenAI chat rows only"):
        to_row({"conversations": [{"from": "observation", "value": "x"}]}, "sharegpt")


def test_tool_calls_train_in_the_format_the_server_prompts_with(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from training.chat_format import encode_prompt, encode_row
    from training.tool_format import render_tool_call

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = to_row({"messages": TOOL_CONVERSATION, "tools": [WEATHER]}, "chat")
    encoded = encode_row(tok, row)
    ids, mask = encoded["input_ids"], encoded["completion_mask"]
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    call = render_tool_call("get_weather", {"city": "Oslo"})
    # Both assistant turns are trained: the call, in the server's tool-call format, and
    # the answer after the tool's result.
    assert trained == f"{call}<end_of_turn>4 degrees and rain in Oslo.<end_of_turn>"
    # The prompt before each answer is exactly what the server sends the engine for the
    # same conversation and tools (service/chat/serving.py calls encode_prompt the same way).
    for answer_at in (1, 3):
        prompt = encode_prompt(tok, TOOL_CONVERSATION[:answer_at], [WEATHER])
        assert ids[:len(prompt)] == prompt
        assert not any(mask[:len(prompt)][-3:])


def test_raw_text_and_input_output(tmp_path):
    report = load_rows(_jsonl(tmp_path / "t.jsonl", [{"text": "FROM python:3.11"}, {"text": ""}]))
    assert report.format == "completion" and report.rows == [{"text": "FROM python:3.11"}]
    assert "empty" in report.errors[0].reason
    field = to_row({"body": "x"}, "completion", FormatOptions(text_field="body"))
    assert field == {"text": "x"}
    segments = {"segments": [{"text": "Q: a\n", "label": False}, {"text": "A: b", "label": True}]}
    assert load_rows(_jsonl(tmp_path / "io.jsonl", [segments])).rows == [segments]
    with pytest.raises(ValueError, match="nothing to train"):
        to_row({"segments": [{"text": "x", "label": False}]}, "input_output")


def test_csv_and_json_column_mapping(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('question,answer\r\n"List containers",docker ps\r\nshow images,\r\n')
    options = FormatOptions(columns={"prompt": "question", "completion": "answer"})
    report = load_rows(csv_path, "prompt_completion", options=options)
    assert report.rows[0]["messages"] == EXPECTED[1:]
    assert report.lines == [2] and report.errors[0].line == 3  # empty answer
    json_path = _jsonl(tmp_path / "a.jsonl", [{"q": "List containers", "a": "docker ps"}])
    alpaca = FormatOptions(columns={"instruction": "q", "output": "a"})
    assert load_rows(json_path, "alpaca", options=alpaca).rows[0]["messages"] == EXPECTED[1:]
    with pytest.raises(ValueError, match="missing column"):
        to_row({"q": "x"}, "alpaca", alpaca)


def _labels(tiny_model_dir, tmp_path, rows):
    """Labels exactly as training computes them: our tokenized rows given to the project's
    SFTTrainer, which builds ``labels`` from ``completion_mask``."""
    from transformers import AutoTokenizer

    from training.config import config_from_dict
    from training.data import tokenize_rows
    from training.trainer import AdapterSFTTrainer, build_sft_config, load_model

    config = config_from_dict(
        {
            "name": "t",
            "base_model": str(tiny_model_dir),
            "output_dir": str(tmp_path),
            "datasets": [{"path": "unused.jsonl"}],
        }
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = AdapterSFTTrainer(
        model=load_model(config, tiny_model_dir),
        args=build_sft_config(config, has_eval=False),
        train_dataset=tokenize_rows(rows, tok),
        processing_class=tok,
    )
    return tok, [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def test_every_weighted_assistant_turn_is_in_the_loss(tiny_model_dir, tmp_path):
    messages = [
        {"role": "system", "content": "Answer with a command."},
        {"role": "user", "content": "list containers"},
        {"role": "assistant", "content": "docker ps"},
        {"role": "user", "content": "and the stopped ones"},
        {"role": "assistant", "content": "docker ps -a", "weight": 0},
        {"role": "user", "content": "and the images"},
        {"role": "assistant", "content": "docker images", "weight": 1},
    ]
    segments = {"segments": [{"text": "Q: a\n", "label": False}, {"text": "A: b", "label": True}]}
    tok, encoded = _labels(tiny_model_dir, tmp_path, [{"messages": messages}, segments])
    ids, labels = encoded[0]
    trained = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    # Turns 1 and 3 are trained (with their end-of-turn marker); the weight-0 turn is not.
    assert trained == "docker ps<end_of_turn>docker images<end_of_turn>"
    assert tok.decode(ids).endswith("docker images<end_of_turn>")
    # The weight-0 answer is still in the input, as context for the later turns.
    assert "docker ps -a" in tok.decode(ids)
    # input_output segments: only label: true segments.
    ids, labels = encoded[1]
    assert tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100]) == "A: b"
