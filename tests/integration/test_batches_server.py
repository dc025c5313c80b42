"""The Batch API on the real server (real Gemma, real vLLM, the official SDK): a batch of
50 requests answers exactly what the same requests get online (greedy)."""

from __future__ import annotations

import io
import json
import time

import pytest

pytestmark = pytest.mark.slow

TOPICS = ["containers", "images", "volumes", "networks", "logs"]


def _wait(client, batch_id: str, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status not in (
            "completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.5)
    return batch


def test_a_batch_of_50_answers_as_online(live_server):
    client = live_server.openai()
    bodies = {}
    for i in range(50):
        if i % 2:
            bodies[f"chat-{i}"] = ("/v1/chat/completions", {
                "model": live_server.model_id, "temperature": 0, "max_tokens": 12,
                "messages": [{"role": "user", "content": f"Q{i}: how do I list docker "
                              f"{TOPICS[i % 5]}?"}]})
        else:
            bodies[f"text-{i}"] = ("/v1/completions", {
                "model": live_server.model_id, "temperature": 0, "max_tokens": 12,
                "prompt": f"{i}. The docker command to list {TOPICS[i % 5]} is"})
    # One batch per endpoint, as OpenAI requires; both run through the same runner.
    outputs = {}
    for endpoint in ("/v1/chat/completions", "/v1/completions"):
        lines = [{"custom_id": cid, "method": "POST", "url": url, "body": body}
                 for cid, (url, body) in bodies.items() if url == endpoint]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint,
                                      completion_window="24h")
        batch = _wait(client, batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts.completed == len(lines) and batch.error_file_id is None
        for row in client.files.content(batch.output_file_id).text.splitlines():
            row = json.loads(row)
            assert row["custom_id"] not in outputs
            outputs[row["custom_id"]] = row["response"]["body"]
    assert set(outputs) == set(bodies)

    for cid, (url, body) in bodies.items():
        if url == "/v1/chat/completions":
            online = client.chat.completions.create(**body)
            assert outputs[cid]["choices"][0]["message"]["content"] == \
                online.choices[0].message.content, cid
        else:
            online = client.completions.create(**body)
            assert outputs[cid]["choices"][0]["text"] == online.choices[0].text, cid
        assert outputs[cid]["usage"] == online.usage.model_dump(exclude_none=True), cid
