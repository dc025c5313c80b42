"""/v1/files: upload validation with line numbers, purpose and size checks, CRUD, driven
through the official openai SDK against the app."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import CHAT_ROWS, build_jobs_app


@pytest.fixture
def client(isolated_home, tmp_path):
    app = build_jobs_app(tmp_path, max_upload_mb=0.01)
    with TestClient(app) as http:
        yield http, openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_list_retrieve_content_delete(client):
    http, sdk = client
    data = _jsonl(CHAT_ROWS)
    created = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.id.startswith("file-") and created.bytes == len(data)
    assert created.filename == "train.jsonl" and created.purpose == "fine-tune"
    assert sdk.files.retrieve(created.id).id == created.id
    assert [f.id for f in sdk.files.list()] == [created.id]
    assert sdk.files.content(created.id).content == data
    assert sdk.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    assert list(sdk.files.list()) == []


def test_alpaca_json_array_is_accepted(client):
    _, sdk = client
    rows = [{"instruction": "show containers", "input": "", "output": "docker ps"}]
    created = sdk.files.create(file=("docker.json", json.dumps(rows).encode()),
                               purpose="fine-tune")
    assert created.purpose == "fine-tune"


def test_wrong_purpose_is_400(client):
    _, sdk = client
    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("train.jsonl", _jsonl(CHAT_ROWS)), purpose="assistants")
    assert "purpose" in err.value.message and err.value.body["param"] == "purpose"


def test_not_json_is_rejected_with_line_numbers(client):
    _, sdk = client
    good = json.dumps(CHAT_ROWS[0])
    bad = f"{good}\n{{not json at all\n{good}\n".encode()
    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("train.jsonl", bad), purpose="fine-tune")
    assert "line 2" in err.value.message
    assert "line 1:" not in err.value.message and "line 3:" not in err.value.message
    assert list(client[1].files.list()) == []  # nothing stored


def test_row_without_assistant_turn_is_rejected_with_line_number(client):
    _, sdk = client
    rows = [*CHAT_ROWS, {"messages": [{"role": "user", "content": "hello?"}]}]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("train.jsonl", _jsonl(rows)), purpose="fine-tune")
    assert "line 3" in err.value.message
    assert "assistant" in err.value.message


def test_size_limit_is_enforced(client):
    http, _ = client
    big = _jsonl(CHAT_ROWS * 200)  # > 10 kB limit of this fixture
    resp = http.post("/v1/files", files={"file": ("big.jsonl", big)},
                     data={"purpose": "fine-tune"})
    assert resp.status_code == 413
    assert "upload limit" in resp.json()["error"]["message"]


def test_unsupported_extension_and_empty_file(client):
    http, _ = client
    resp = http.post("/v1/files", files={"file": ("train.txt", b"hello")},
                     data={"purpose": "fine-tune"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"
    resp = http.post("/v1/files", files={"file": ("train.jsonl", b"")},
                     data={"purpose": "fine-tune"})
    assert resp.status_code == 400 and "empty" in resp.json()["error"]["message"]
