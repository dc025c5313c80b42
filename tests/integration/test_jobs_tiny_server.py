"""The fine-tuning loop end to end on a real server process (vLLM engine) with the tiny
model, driven by the official openai SDK: upload -> job -> real `tuneserve train` worker ->
adapter hot-loaded -> chat completion from the fine-tuned model; cancel; kill -9 of the
worker and the server, then restart: the job resumes, never stays `running`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from jobs_server import JobsServer

from service.jobs.store import JobStore

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}
ROWS = [
    {"messages": [{"role": "user", "content": "list containers"},
                  {"role": "assistant", "content": "docker ps"}]},
    {"messages": [{"role": "user", "content": "list images"},
                  {"role": "assistant", "content": "docker images"}]},
] + [
    {"messages": [{"role": "user", "content": f"stop container web-{i}"},
                  {"role": "assistant", "content": f"docker stop web-{i}"}]}
    for i in range(14)
]


def _hp(**extra):
    hp = {"n_epochs": 1, "batch_size": 4, "logging_steps": 1, **extra}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def _wait(sdk, job_id, statuses, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, tmp_path_factory):
    server = JobsServer(model=tiny_model_dir, home=tmp_path_factory.mktemp("jobs-home"),
                        env={"TUNESERVE_JOBS_CANCEL_GRACE_S": "10"})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused",
                         max_retries=5)


@pytest.fixture(scope="module")
def training_file(sdk):
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    return sdk.files.create(file=("docker.jsonl", data), purpose="fine-tune")


def test_job_trains_and_its_adapter_answers(sdk, training_file, tiny_server):
    base = sdk.models.list().data[0].id
    job = sdk.fine_tuning.jobs.create(model=base, training_file=training_file.id,
                                      suffix="tiny", method=_hp(max_steps=4, lora_rank=8),
                                      metadata={"alias": "tiny-docker"})
    done = _wait(sdk, job.id, TERMINAL, timeout=300)
    assert done.status == "succeeded", (done.error, tiny_server.log_tail())
    assert done.fine_tuned_model == f"ft:{base}:tiny:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0

    models = {m.id: m for m in sdk.models.list().data}
    assert done.fine_tuned_model in models
    # 16 rows: 4 held out by default (seeded), recorded in the manifest and saved beside it.
    adapter = sdk.get(f"/adapters/{done.fine_tuned_model}", cast_to=object)
    split = adapter["manifest"]["split"]
    assert (split["held_out_rows"], split["train_rows"], split["seed"]) == (4, 12, done.seed)
    held_out = (Path(adapter["path"]) / "held_out.jsonl").read_text().splitlines()
    assert len(held_out) == 4 and (Path(adapter["path"]) / "train_rows.sha256").is_file()

    reply = sdk.chat.completions.create(
        model=done.fine_tuned_model, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": "list containers"}])
    assert reply.model == done.fine_tuned_model
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens >= 1

    metrics = [e for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)
               if e.type == "metrics"]
    # One metrics event per step; the held-out loss measured at the end joins step 4's.
    assert sorted(e.data["step"] for e in metrics) == [1, 2, 3, 4]
    assert all(isinstance(e.data["train_loss"], float) for e in metrics)
    last = max(metrics, key=lambda e: e.data["step"])
    assert isinstance(last.data["valid_loss"], float), last
    assert "validation loss=" in last.message

    # The automatic evaluation on the 4 held-out rows: a 4-step adapter of a random tiny
    # model does not beat the base, so the gate refuses it and the alias stays empty; the
    # verdict, the figures with their CI and the report are there all the same.
    done = _wait_evaluation(sdk, job.id, timeout=300)
    evaluation = done.evaluation
    assert evaluation["status"] == "done", (evaluation, tiny_server.log_tail())
    assert evaluation["verdict"] == "does not beat the base" and not evaluation["promoted"]
    assert len(done.result_files) == 1
    summary = json.loads(sdk.files.content(done.result_files[0]).content)
    assert summary["figures"]["rows"] == 4 and summary["plan"]["primary"] == "exact_match"
    vs_base = summary["figures"]["vs_base"]["candidate"]["exact_match"]
    assert vs_base["low"] <= 0 <= vs_base["high"]
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Evaluation on 4 held-out rows") for m in messages), messages
    assert any(m.startswith("Verdict:") for m in messages)
    assert any(m.startswith("Not promoted to alias tiny-docker") for m in messages)
    alias = sdk.get("/aliases/tiny-docker", cast_to=object)
    assert alias["adapter"] is None
    refused = alias["decisions"][0]
    assert (refused["action"], refused["adapter"], refused["actor"]) == (
        "refused", done.fine_tuned_model, f"job:{job.id}")
    assert refused["evidence"]["result_file"] == done.result_files[0]
    report = httpx.get(tiny_server.base_url + summary["report"]["html"], timeout=30)
    assert report.status_code == 200 and f"job-{job.id}" in report.text


def _wait_evaluation(sdk, job_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if (job.evaluation or {}).get("status") in {"done", "failed", "skipped"}:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} evaluation still {job.evaluation} after {timeout}s")


def test_second_job_is_cancelled_mid_training(sdk, training_file, tiny_server):
    base = sdk.models.list().data[0].id
    job = sdk.fine_tuning.jobs.create(model=base, training_file=training_file.id,
                                      method=_hp(max_steps=500))
    _wait(sdk, job.id, {"running"}, timeout=60)
    # wait until the worker is actually training (it writes progress events)
    deadline = time.monotonic() + 240
    while not any(e.type == "metrics" for e in sdk.fine_tuning.jobs.list_events(job.id)):
        assert time.monotonic() < deadline, tiny_server.log_tail()
        time.sleep(1)
    sdk.fine_tuning.jobs.cancel(job.id)
    done = _wait(sdk, job.id, TERMINAL, timeout=120)
    assert done.status == "cancelled"
    # Stopped by the SIGTERM (its own last words), not by the SIGKILL after the grace
    # period (a killed worker writes nothing), and long before its last step.
    run_dir = tiny_server.home / "jobs" / "runs" / job.id
    last = json.loads((run_dir / "train.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "error" and "SIGTERM" in last["message"], last
    steps = [e.data["step"] for e in sdk.fine_tuning.jobs.list_events(job.id, limit=1000)
             if e.type == "metrics"]
    assert steps and max(steps) < 500
    out = run_dir / "output"
    assert not (out / job.id).exists(), "a cancelled job must leave no adapter"
    assert done.fine_tuned_model is None
    assert done.fine_tuned_model not in {m.id for m in sdk.models.list().data}


def test_killed_worker_and_server_restart_resumes_the_job(sdk, training_file, tiny_server):
    """Runs last in this module: it kills the module's server and starts a new one."""
    base = sdk.models.list().data[0].id
    job = sdk.fine_tuning.jobs.create(model=base, training_file=training_file.id,
                                      # long enough that the kill lands mid-run: a
                                      # 12-step tiny job could finish (and drop its
                                      # checkpoints) between the poll and the kill
                                      method=_hp(max_steps=400, save_steps=2))
    deadline = time.monotonic() + 240
    while not list(sdk.fine_tuning.jobs.checkpoints.list(job.id)):
        assert time.monotonic() < deadline, tiny_server.log_tail()
        time.sleep(1)
    before = {j.id: j.status for j in sdk.fine_tuning.jobs.list()}
    events_before = [e.id for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    store = JobStore(tiny_server.home / "jobs")
    worker_pid = store.get_job(job.id)["pid"]
    tiny_server.kill()                       # the service dies...
    os.killpg(worker_pid, signal.SIGKILL)    # ...and so does its worker, mid-job
    assert store.get_job(job.id)["status"] == "running"  # what a crash leaves behind

    tiny_server.start()
    restarted = openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused",
                              max_retries=5)
    done = _wait(restarted, job.id, TERMINAL, timeout=300)
    assert done.status == "succeeded", (done.error, tiny_server.log_tail())
    messages = [e.message for e in restarted.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any("service stopped while the job was running" in m for m in messages)
    assert any(m.startswith("Resuming training from checkpoint") for m in messages)
    # files, earlier jobs and their events survived the restart
    assert training_file.id in {f.id for f in restarted.files.list()}
    after = {j.id: j.status for j in restarted.fine_tuning.jobs.list()}
    assert after.keys() == before.keys()
    assert all(after[i] == s for i, s in before.items() if s in TERMINAL)
    events_after = {e.id for e in restarted.fine_tuning.jobs.list_events(job.id, limit=200)}
    assert set(events_before) <= events_after
    # the adapters of finished jobs are served again after the restart
    assert done.fine_tuned_model in {m.id for m in restarted.models.list().data}
