"""Fine-tuning through the shared real server (`live_server`: real Gemma 3 270M on vLLM):
a 64-row slice of the docker-commands data, ~20 steps, then the fine-tuned model answers."""

from __future__ import annotations

import json
import time

import openai
import pytest

pytestmark = pytest.mark.slow


def test_gemma_job_on_docker_slice(live_server, shared_data):
    from training.data import load_rows

    sdk = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.user_key,
                        max_retries=5)
    rows = load_rows(shared_data / "dockerNLcommands.json").rows[:64]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file = sdk.files.create(file=("docker-64.jsonl", data), purpose="fine-tune")

    job = sdk.fine_tuning.jobs.create(
        model=live_server.model_id, training_file=file.id, suffix="docker", seed=42,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5.0,
            "max_steps": 20, "sequence_len": 128, "logging_steps": 2, "lora_rank": 8,
        }}},
    )
    deadline = time.monotonic() + 420
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status not in {
            "succeeded", "failed", "cancelled"}:
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(2)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{live_server.model_id}:docker:{job.id}"

    metrics = sorted((e.data for e in sdk.fine_tuning.jobs.list_events(job.id, limit=200)
                      if e.type == "metrics"), key=lambda d: d["step"])
    assert metrics[-1]["step"] == 20
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"], "training did not learn"

    reply = sdk.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "List all running docker containers."}])
    assert reply.model == job.fine_tuned_model
    assert reply.choices[0].message.content.strip()
