"""State survives a restart: a second ``tuneserve serve`` on the same ``$TUNESERVE_HOME``
serves again what the first one served, and a batch interrupted by kill -9 resumes with
nothing lost and nothing answered twice (real vLLM, tiny model)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from service.batches.store import BatchStore
from tests.integration.conftest import start_server, stop_server
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
BATCH_SIZE = 120


def _start_batch(client, model_id: str) -> str:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": model_id, "prompt": f"request {i}:", "max_tokens": 24,
                       "temperature": 0, "ignore_eos": True}} for i in range(BATCH_SIZE)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/completions",
                                 completion_window="24h").id


def _wait_until(predicate, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_state_survives_a_kill_9(tiny_model_dir, tmp_path, monkeypatch):
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "src" / "kept")
    doomed = make_lora_adapter(Path(tiny_model_dir), tmp_path / "src" / "doomed", seed=1)
    monkeypatch.setenv("TUNESERVE_BATCH_CONCURRENCY", "1")  # a batch long enough to interrupt
    server = start_server(Path(tiny_model_dir), "tiny-gemma", tmp_path / "run")
    try:
        server.register_adapter(adapter, "kept")
        server.register_adapter(doomed, "doomed")
        client = server.openai()
        before = client.completions.create(model="kept", prompt="docker", max_tokens=8,
                                           temperature=0)
        batch_id = _start_batch(client, server.model_id)
        _wait_until(lambda: client.batches.retrieve(batch_id).request_counts.completed >= 3,
                    "the batch to answer its first requests")
        os.killpg(server.process.pid, signal.SIGKILL)  # no shutdown code runs
        server.process.wait(timeout=30)
    finally:
        stop_server(server)
    answered_before = BatchStore(server.home / "batches" / "batches.sqlite").answered(batch_id)
    assert 3 <= len(answered_before) < BATCH_SIZE, "the kill did not land mid-batch"
    shutil.rmtree(doomed)  # gone while the server was down: dropped with a log line

    server = start_server(Path(tiny_model_dir), "tiny-gemma", tmp_path / "run")
    try:
        client = server.openai()
        assert {m.id for m in client.models.list().data} == {"tiny-gemma", "kept"}
        after = client.completions.create(model="kept", prompt="docker", max_tokens=8,
                                          temperature=0)
        assert after.choices[0].text == before.choices[0].text
        assert "doomed" in server.log_tail(400) and "not restored" in server.log_tail(400)

        batch = _wait_until(
            lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b,
            "the resumed batch")
        assert batch.request_counts.model_dump() == {
            "total": BATCH_SIZE, "completed": BATCH_SIZE, "failed": 0}
        output = client.files.content(batch.output_file_id).text
        rows = [json.loads(line) for line in output.splitlines()]
        assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(BATCH_SIZE)]
        # Answers kept from before the kill are the stored ones, not recomputed.
        kept = {r["custom_id"]: r["response"] for r in answered_before}
        for row in rows:
            if row["custom_id"] in kept:
                assert row["response"] == kept[row["custom_id"]]
        # Before and after the kill alike, each answer is what the request gets online.
        last_before = int(answered_before[-1]["custom_id"][1:])
        for i in (0, last_before, last_before + 1, BATCH_SIZE - 1):
            online = client.completions.create(model=server.model_id, prompt=f"request {i}:",
                                               max_tokens=24, temperature=0,
                                               extra_body={"ignore_eos": True})
            assert rows[i]["response"]["body"]["choices"][0]["text"] == online.choices[0].text
    finally:
        stop_server(server)
