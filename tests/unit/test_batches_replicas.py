"""Two batch runners (two replicas) on one database, on both backends: every request of a
batch is answered exactly once whichever runner answers it, one runner validates and one
writes the output, and a cancel recorded through one replica stops the other. The
engine is a stand-in (``execute``); the real one runs in tests/integration/."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from service.batches.runner import BatchRunner
from service.batches.store import BatchStore
from service.files.serving import FilesService
from service.jobs.runtime import jobs_store


@pytest.fixture
def shared(database_url, isolated_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESERVE_SHARED_DIR", str(tmp_path / "shared"))


def _request(i: int) -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}]}}


def _batch(files: FilesService, store: BatchStore, n: int) -> str:
    content = "".join(json.dumps(_request(i)) + "\n" for i in range(n)).encode()
    file_id = files.add_result(content, "in.jsonl", purpose="batch").id
    store.add(batch_id="batch-1", endpoint="/v1/chat/completions", input_file_id=file_id,
              completion_window="24h", metadata=None, expires_at=int(time.time()) + 3600)
    return "batch-1"


def _runners(calls: Counter, *, step_s: float) -> list[BatchRunner]:
    files = FilesService(jobs_store(), max_upload_bytes=1 << 20)

    async def execute(url: str, body: dict, project: str) -> dict:
        calls[body["messages"][0]["content"]] += 1
        await asyncio.sleep(step_s)
        return {"id": f"chatcmpl-{body['messages'][0]['content']}", "object": "chat.completion"}

    # Two replicas: their own lease names (as two pods' hosts would give).
    runners = []
    for n in (1, 2):
        runner = BatchRunner(BatchStore(), lambda: files, execute, concurrency=2, poll_s=0.05)
        runner.owner = f"replica-{n}:batches"
        runners.append(runner)
    return runners


async def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def test_two_runners_answer_every_request_exactly_once(shared):
    calls: Counter = Counter()
    store = BatchStore()

    async def main():
        runners = _runners(calls, step_s=0.02)
        files = runners[0].files()
        batch_id = _batch(files, store, 40)
        for runner in runners:
            runner.start()
        try:
            batch = await _until(lambda: (b := store.get(batch_id))["status"] == "completed"
                                 and b)
        finally:
            for runner in runners:
                await runner.stop()
        return files, batch

    files, batch = asyncio.run(main())
    assert calls == Counter({str(i): 1 for i in range(40)})
    answered = store.answered(batch["id"])
    # Both replicas did part of the work.
    assert {r["claimed_by"].rsplit(":", 1)[0] for r in answered} == {
        "replica-1:batches", "replica-2:batches"}
    output = files.path(batch["output_file_id"]).read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(
        f"r{i}" for i in range(40))
    outputs = [f for f in files.store.list_files(purpose="batch_output")]
    assert [f["id"] for f in outputs] == [batch["output_file_id"]]  # one writer


def test_a_cancel_through_one_replica_stops_the_other(shared):
    calls: Counter = Counter()
    store = BatchStore()

    async def main():
        runners = _runners(calls, step_s=0.2)
        batch_id = _batch(runners[0].files(), store, 200)
        runners[1].start()  # only replica 2 runs batches
        try:
            await _until(lambda: calls)
            # Replica 1's API records the cancel (service/batches/serving.py does this).
            store.set_status(batch_id, "cancelling", only_from=("in_progress",))
            runners[0].cancel(batch_id)
            return await _until(lambda: (b := store.get(batch_id))["status"] == "cancelled"
                                and b, timeout=10)
        finally:
            await runners[1].stop()

    batch = asyncio.run(main())
    assert sum(calls.values()) < 200
    assert store.counts(batch["id"])["completed"] < 200
