"""Dataset loaders: every format with good and bad rows, line-numbered reports, the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import (
    check_lengths,
    detect_format,
    held_out_indices,
    load_rows,
    split_rows,
)
from tuneserve.errors import UserError

GOOD_CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "List containers"},
        {"role": "assistant", "content": "docker ps"},
    ]
}


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_chat_jsonl_good_and_bad_rows(tmp_path):
    path = _jsonl(
        tmp_path / "chat.jsonl",
        [
            GOOD_CHAT,  # line 1
            {"messages": [{"role": "user", "content": "hi"}]},  # 2: no assistant
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "  "},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "{not json",  # 5
            {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},  # 6
            {"text": "no messages"},  # 7
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },  # 8: ends with user
            GOOD_CHAT,  # 9
        ],
    )
    report = load_rows(path)
    assert report.format == "chat"
    assert len(report.rows) == 2 and report.lines == [1, 9]
    assert not report.ok
    by_line = {e.line: e.reason for e in report.errors}
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8}
    assert "no assistant turn" in by_line[2]
    assert "unknown role 'robot'" in by_line[3]
    assert "empty content" in by_line[4]
    assert "invalid JSON" in by_line[5]
    assert "no 'role'" in by_line[6]
    assert "missing key 'messages'" in by_line[7]
    assert "last message must be the assistant" in by_line[8]
    text = report.format_errors()
    assert text.splitlines()[0].startswith("line 2: ")
    assert "9 rows, 2 valid, 7 invalid" in report.summary()
    assert report.format_errors(limit=3).count("\n") == 4  # 3 errors + "... more" + summary
    assert report.rows[0] == GOOD_CHAT


def test_alpaca_json_array_reports_the_line_each_object_starts_on(tmp_path):
    records = [
        {"instruction": "translate", "input": "list containers", "output": "docker ps"},
        {"instruction": "translate", "input": "x"},  # no output
        {"instruction": "list images", "output": "docker images"},  # no input: fine
        {"instruction": "", "input": "x", "output": ""},  # empty content
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records, indent=2))
    report = load_rows(path)
    assert report.format == "alpaca"
    starts = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert report.lines == [starts[0], starts[2]]
    assert [e.line for e in report.errors] == [starts[1], starts[3]]
    assert "'output'" in report.errors[0].reason
    assert "empty content" in report.errors[1].reason
    assert report.rows[0]["messages"] == [
        {"role": "user", "content": "translate\n\nlist containers"},
        {"role": "assistant", "content": "docker ps"},
    ]
    assert report.rows[1]["messages"][0]["content"] == "list images"


def test_alpaca_jsonl_and_real_docker_file(tmp_path, shared_data):
    path = _jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}, {"output": 3}])
    report = load_rows(path, "alpaca")
    assert len(report.rows) == 1 and report.errors[0].line == 2
    docker = load_rows(shared_data / "dockerNLcommands.json")
    assert docker.ok and len(docker.rows) == 2415 and docker.format == "alpaca"


def test_prompt_completion_strings_and_message_lists(tmp_path):
    path = _jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "list containers", "completion": "docker ps"},
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": "a"}],
            },
            {"prompt": "only a prompt"},
            {"prompt": "p", "completion": ""},
        ],
    )
    report = load_rows(path)
    assert report.format == "prompt_completion"
    assert report.lines == [1, 2]
    assert [e.line for e in report.errors] == [3, 4]
    assert "missing key" in report.errors[0].reason and "empty" in report.errors[1].reason


def test_chat_csv_with_bom_and_crlf(tmp_path, shared_data):
    real = load_rows(shared_data / "hotel_hospitality_data.csv")
    assert real.format == "chat_csv" and real.ok and len(real.rows) == 18
    assert real.rows[0]["messages"][0]["role"] == "system"

    def cell(record) -> str:
        return '"' + json.dumps(record).replace('"', '""') + '"'

    bad_role = {
        "messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]
    }
    text = "\r\n".join([cell(GOOD_CHAT), '"{broken', 'json"', cell(bad_role), cell(GOOD_CHAT)])
    path = tmp_path / "chat.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\r\n")
    report = load_rows(path)
    assert report.lines == [1, 5]
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (2, "invalid JSON"),
        (4, "message 0 has unknown role 'bot' (use system, user, assistant)"),
    ]


def test_hf_datasets_folder_and_parquet(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(
        [
            {"prompt": "list containers", "completion": "docker ps"},
            {"prompt": "", "completion": "x"},
        ]
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    report = load_rows(tmp_path / "saved")
    assert report.format == "hf_datasets"
    assert report.lines == [1] and report.errors[0].line == 2
    assert "row 2:" in report.format_errors()
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert load_rows(tmp_path / "d.parquet").lines == [1]
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(tmp_path / "dd", split="test").rows) == 1
    with pytest.raises(UserError, match="no split 'nope'"):
        load_rows(tmp_path / "dd", split="nope")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="dataset not found"):
        load_rows(tmp_path / "nope.jsonl")
    path = _jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(UserError, match="cannot tell the format"):
        detect_format(path)
    with pytest.raises(UserError, match="unknown dataset type"):
        load_rows(path, "yaml")


def test_too_long_rows_are_reported(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    }
    report = load_rows(_jsonl(tmp_path / "c.jsonl", [GOOD_CHAT, long, GOOD_CHAT]))
    check_lengths(report, tokenizer, sequence_len=64)
    assert report.lines == [1, 3]
    assert report.errors[0].line == 2 and "too long" in report.errors[0].reason


def test_split_is_seeded_deterministic_and_disjoint():
    rows = [{"i": i} for i in range(100)]
    train, held = split_rows(rows, 0.1, seed=7)
    assert len(held) == 10 and len(train) == 90
    assert split_rows(rows, 0.1, seed=7) == (train, held)
    assert split_rows(rows, 0.1, seed=8)[1] != held
    assert {r["i"] for r in train}.isdisjoint({r["i"] for r in held})
    assert [r["i"] for r in held] == held_out_indices(100, 0.1, 7)
    assert len(split_rows(rows, 25, seed=7)[1]) == 25
    assert split_rows(rows, 0, seed=7) == (rows, [])
    with pytest.raises(UserError):
        split_rows(rows, 100, seed=1)


def test_docker_held_out_split_has_at_least_200_rows(shared_data):
    from training.config import load_config

    config = load_config(Path("training/configs/docker-lora.yaml"))
    rows = load_rows(shared_data / "dockerNLcommands.json").rows
    _, held = split_rows(rows, config.val_set_size, config.seed)
    assert len(held) >= 200
