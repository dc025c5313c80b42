"""The first-run demo job: queued only when no adapter and no job exist yet."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, build_jobs_app, wait_for


@pytest.fixture
def demo_data(tmp_path):
    rows = [{"instruction": f"show container {i}", "input": "", "output": f"docker ps -f id={i}"}
            for i in range(20)]
    path = tmp_path / "docker.json"
    path.write_text(json.dumps(rows))
    return path


def _app(tmp_path, demo_data, adapters):
    return build_jobs_app(tmp_path, demo_job_if_no_adapters=True, demo_data=str(demo_data),
                          demo_rows=8, demo_max_steps=3,
                          registry=SimpleNamespace(list=lambda: adapters))


def test_demo_job_is_queued_and_served_when_nothing_exists(isolated_home, tmp_path, demo_data):
    app = _app(tmp_path, demo_data, adapters=[])
    with TestClient(app) as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
        job = wait_for(lambda: next(iter(sdk.fine_tuning.jobs.list()), None))
        assert job.model == BASE_ID
        assert job.method.supervised.hyperparameters.model_extra["max_steps"] == 3
        file = sdk.files.retrieve(job.training_file)
        assert file.filename == "docker-demo.jsonl"
        lines = sdk.files.content(file.id).text.splitlines()
        assert len(lines) == 8 and "messages" in json.loads(lines[0])
        done = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in
                        {"succeeded", "failed"} and j)
        assert done.status == "succeeded"
        assert done.fine_tuned_model == f"ft:{BASE_ID}:docker-demo:{job.id}"
    # a restart with the job already there queues nothing new
    with TestClient(_app(tmp_path, demo_data, adapters=[])) as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
        assert [j.id for j in sdk.fine_tuning.jobs.list()] == [job.id]


def test_no_demo_job_when_an_adapter_exists(isolated_home, tmp_path, demo_data):
    app = _app(tmp_path, demo_data, adapters=["docker-lora"])
    with TestClient(app) as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
        wait_for(lambda: app.state.jobs_supervisor._loop_task is not None)
        time.sleep(1.0)  # give the demo task its chance to (wrongly) queue a job
        assert list(sdk.fine_tuning.jobs.list()) == []
