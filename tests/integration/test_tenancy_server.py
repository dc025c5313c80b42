"""Acceptance of projects on a real server (``tuneserve serve``, vLLM engine, tiny model,
a real ``tuneserve train`` worker), driven by the official openai SDK: two projects A and B
from a keys file. A's file, job, batch and the job's adapter are invisible to B (list,
retrieve and chat with the model id give 404); B cannot cancel A's job; an admin sees both.
The fast versions of every rule are in tests/unit/test_tenancy.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.slow
KEYS = {"a": "tenancy-a-key-0123456789", "b": "tenancy-b-key-0123456789"}
ROWS = "".join(json.dumps({"messages": [
    {"role": "user", "content": f"stop container web-{i}"},
    {"role": "assistant", "content": f"docker stop web-{i}"}]}) + "\n"
    for i in range(16)).encode()
CHAT = {"messages": [{"role": "user", "content": "list containers"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tenancy-server")
    keys_file = workdir / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": KEYS["a"], "project": "a"},
                                              {"key": KEYS["b"], "project": "b"}]}))
    # No post-training evaluation: this module is about who sees what, not the gate.
    live = start_server(Path(tiny_model_dir), "tiny-gemma", workdir,
                        env={"TUNESERVE_API_KEYS_FILE": str(keys_file),
                             "TUNESERVE_JOBS_EVALUATE_ON_SUCCESS": "0",
                             "TUNESERVE_JOBS_POLL_INTERVAL_S": "0.2"})
    yield live
    stop_server(live)


def _sdk(server, who: str) -> openai.OpenAI:
    key = server.admin_key if who == "admin" else KEYS[who]
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0,
                         timeout=120)


def _wait(poll, done, timeout: float):
    deadline = time.monotonic() + timeout
    while not done(value := poll()):
        assert time.monotonic() < deadline, value
        time.sleep(0.5)
    return value


def test_project_a_objects_are_invisible_to_project_b(server):
    a, b, admin = _sdk(server, "a"), _sdk(server, "b"), _sdk(server, "admin")
    base = a.models.list().data[0].id
    upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
    hp = {"n_epochs": 1, "batch_size": 4, "max_steps": 2, "lora_rank": 8}
    job = a.fine_tuning.jobs.create(model=base, training_file=upload.id,
                                    method={"type": "supervised",
                                            "supervised": {"hyperparameters": hp}})
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.cancel(job.id)
    batch_input = json.dumps({"custom_id": "r0", "method": "POST",
                              "url": "/v1/chat/completions",
                              "body": {"model": base, **CHAT}}).encode() + b"\n"
    batch = a.batches.create(
        input_file_id=a.files.create(file=("in.jsonl", batch_input), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                 lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)
    assert done.status == "succeeded", (done.error, server.log_tail())  # B's cancel did nothing
    model = done.fine_tuned_model
    assert a.chat.completions.create(model=model, **CHAT).choices[0].message is not None

    # B: lists are empty of A's objects, and each id is 404 as if absent.
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    assert b.batches.list().data == []
    assert model not in {m.id for m in b.models.list().data}
    for call in (lambda: b.files.retrieve(upload.id),
                 lambda: b.files.content(upload.id),
                 lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.batches.retrieve(batch.id),
                 lambda: b.models.retrieve(model),
                 lambda: b.chat.completions.create(model=model, **CHAT)):
        with pytest.raises(openai.NotFoundError):
            call()

    # The admin sees both projects' objects; B's own upload is B's.
    b_upload = b.files.create(file=("b.jsonl", ROWS), purpose="fine-tune")
    assert {upload.id, b_upload.id} <= {f.id for f in admin.files.list().data}
    assert admin.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model
    assert admin.batches.retrieve(batch.id).id == batch.id
    assert model in {m.id for m in admin.models.list().data}
    assert [f.id for f in b.files.list().data] == [b_upload.id]
