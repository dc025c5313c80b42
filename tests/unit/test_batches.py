"""The Batch API against the real app with the fake engine (fast): input checks, the
OpenAI SDK's batches calls, output/error files, priority, cancel and resume after a
restart. The real engine (and kill -9) runs in tests/integration/test_batches_server.py."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
import pytest

from service.batches.input import read_lines
from service.batches.store import BatchStore


def _chat(custom_id: str, content: str = "list containers", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": content}],
                     "max_tokens": 8, **body}}


def test_input_lines_report_every_problem_with_its_line(tmp_path):
    path = tmp_path / "in.jsonl"
    good = _chat("a")
    path.write_text("\n".join([
        json.dumps(good), "not json", json.dumps({**good, "method": "GET"}),
        json.dumps({**good, "url": "/v1/embeddings"}), json.dumps(good),
        json.dumps({**good, "custom_id": "b", "extra": 1}), json.dumps({**good, "custom_id": ""}),
    ]) + "\n")
    requests, errors = read_lines(path)
    assert [r.custom_id for r in requests] == ["a"]
    assert [(e.line, e.param) for e in errors] == [
        (2, None), (3, "method"), (4, "url"), (5, "custom_id"), (6, "extra"), (7, "custom_id")]
    assert errors[3].code == "duplicate_custom_id"


def test_batch_answers_like_the_online_endpoint_behind_online_priority(server_factory):
    server = server_factory()
    requests = [_chat(f"r{i}", f"question {i}") for i in range(5)]
    requests.append(_chat("bad-model", model="nope"))
    requests.append({**_chat("completion"), "url": "/v1/completions",
                     "body": {"model": "tiny", "prompt": "docker", "max_tokens": 4}})
    requests[-1]["url"] = "/v1/chat/completions"  # a completions body on the chat endpoint
    batch = server.sdk.batches.create(input_file_id=server.upload(requests),
                                      endpoint="/v1/chat/completions", completion_window="24h",
                                      metadata={"purpose": "test"})
    assert batch.status == "validating" and batch.metadata == {"purpose": "test"}
    batch = server.wait(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": 7, "completed": 5, "failed": 2}
    assert batch.completed_at and batch.in_progress_at and batch.finalizing_at

    output = server.lines(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(5)]
    online = server.sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "question 0"}], max_tokens=8)
    first = output[0]["response"]
    assert first["status_code"] == 200 and first["request_id"] == first["body"]["id"]
    assert first["body"]["choices"][0]["message"] == online.choices[0].message.model_dump(
        exclude_none=True) | {"content": online.choices[0].message.content}
    errors = {line["custom_id"]: line["response"] for line in server.lines(batch.error_file_id)}
    assert errors["bad-model"]["status_code"] == 404
    assert errors["completion"]["status_code"] == 400
    assert errors["completion"]["body"]["error"]["param"] == "messages"
    # Every batch request went to the engine behind online requests (vLLM priority 1).
    assert server.engine.priorities.count(1) == 5 and server.engine.priorities[-1] == 0
    assert server.sdk.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_a_bad_input_file_fails_the_batch_with_line_numbers(server_factory):
    server = server_factory()
    upload = server.upload([_chat("a"), {**_chat("b"), "url": "/v1/completions"}])
    batch = server.wait(server.sdk.batches.create(
        input_file_id=upload, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.param, e.code) for e in batch.errors.data] == [(2, "url", "invalid_url")]
    assert server.engine.calls == []


def test_bad_requests_are_refused_by_name(server_factory):
    server = server_factory()
    fine_tune = server.sdk.files.create(
        file=("train.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n')),
        purpose="fine-tune").id
    cases = [
        ({"input_file_id": fine_tune, "endpoint": "/v1/chat/completions",
          "completion_window": "24h"}, 400, "input_file_id"),
        ({"input_file_id": "file-missing", "endpoint": "/v1/chat/completions",
          "completion_window": "24h"}, 404, "input_file_id"),
        ({"input_file_id": fine_tune, "endpoint": "/v1/embeddings",
          "completion_window": "24h"}, 400, "endpoint"),
        ({"input_file_id": fine_tune, "endpoint": "/v1/chat/completions",
          "completion_window": "1h"}, 400, "completion_window"),
        ({"input_file_id": fine_tune, "endpoint": "/v1/chat/completions",
          "completion_window": "24h", "output_expires_after": {"seconds": 3600}}, 400,
         "output_expires_after"),
    ]
    for body, status, param in cases:
        response = server.http.post("/v1/batches", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param
    bad_upload = server.http.post(
        "/v1/files", data={"purpose": "batch"},
        files={"file": ("in.jsonl", b'{"custom_id": "a", "method": "POST"}\n')})
    assert bad_upload.status_code == 400 and "line 1" in bad_upload.json()["error"]["message"]
    assert server.http.get("/v1/batches/batch-missing").status_code == 404


def test_cancel_keeps_what_was_answered_and_stops_the_rest(server_factory):
    # Two requests answer, the third hangs in the engine until it is aborted.
    server = server_factory(engine_kw={"stall_after": 2}, batch_concurrency=1)
    upload = server.upload([_chat(f"r{i}") for i in range(40)])
    batch = server.sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    deadline = time.monotonic() + 30
    while len(server.engine.calls) < 3:
        assert time.monotonic() < deadline, "the third request never reached the engine"
        time.sleep(0.02)
    assert server.sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = server.wait(batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert [line["custom_id"] for line in server.lines(batch.output_file_id)] == ["r0", "r1"]
    assert batch.request_counts.model_dump() == {"total": 40, "completed": 2, "failed": 0}
    assert len(server.engine.aborted) == 1 and len(server.engine.calls) == 3
    again = server.http.post(f"/v1/batches/{batch.id}/cancel")
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_state"
    listed = server.sdk.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch.id]


def test_a_restart_resumes_with_only_the_unanswered_requests(server_factory, isolated_home):
    server = server_factory()
    upload = server.upload([_chat(f"r{i}") for i in range(6)])
    server.close()
    # A batch a killed server left mid-way: validated, two requests already answered.
    store = BatchStore(isolated_home / "batches" / "batches.sqlite")
    store.add(batch_id="batch-left", endpoint="/v1/chat/completions", input_file_id=upload,
              completion_window="24h", metadata=None, expires_at=int(time.time()) + 3600)
    from service.batches.input import read_lines as lines_of
    from service.jobs.store import JobStore

    path = JobStore(isolated_home / "jobs").get_file(upload)["path"]
    store.start("batch-left", lines_of(Path(path))[0])
    for line in (1, 2):
        store.finish_request("batch-left", line, 200, {"status_code": 200, "request_id": "x",
                                                       "body": {"earlier": line}})

    restarted = server_factory()
    batch = restarted.wait("batch-left")
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert len(restarted.engine.calls) == 4  # only the unanswered ones ran
    output = restarted.lines(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(6)]
    assert [line["response"]["body"].get("earlier") for line in output[:2]] == [1, 2]


def test_a_batch_is_visible_to_its_project_and_admins_only(server_factory, tmp_path):
    keys = {"a": "project-a-key-0123456789", "b": "project-b-key-0123456789",
            "admin": "admin-key-0123456789"}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"key": keys["a"], "project": "a"}, {"key": keys["b"], "project": "b"},
        {"key": keys["admin"], "project": "ops", "role": "admin"}]}))
    server = server_factory(engine_kw={"stall_after": 0}, api_keys_file=keys_file)

    def sdk(who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=keys[who],
                             http_client=server.http, max_retries=0)

    data = json.dumps(_chat("r0")).encode() + b"\n"
    upload = sdk("a").files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
    batch = sdk("a").batches.create(input_file_id=upload, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert [b.id for b in sdk("a").batches.list().data] == [batch.id]
    assert sdk("b").batches.list().data == []
    for call in (lambda: sdk("b").batches.retrieve(batch.id),
                 lambda: sdk("b").batches.cancel(batch.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert sdk("admin").batches.retrieve(batch.id).id == batch.id
    assert [b.id for b in sdk("admin").batches.list().data] == [batch.id]
    assert sdk("a").batches.cancel(batch.id).status in ("cancelling", "cancelled")
