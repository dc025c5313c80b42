"""Several supervisors (one per replica) on one jobs database, on both backends: a job runs
once, a lost lease stops the worker and writes nothing, recovery leaves other replicas'
jobs alone, a dead replica's job is taken over from its checkpoint, and a cancel reaches
the replica that runs the job. Each app is a replica (its own ``replica_id``) sharing
``TUNESERVE_DATABASE_URL`` and the shared folder; the trainer is the contract-#1 fake."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, CHAT_ROWS, build_jobs_app, wait_for

from service.jobs.runtime import jobs_store
from service.jobs.settings import JobsSettings
from service.jobs.store import now
from service.jobs.supervisor import JobSupervisor, checkpoints_dir

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def shared(database_url, isolated_home, tmp_path, monkeypatch) -> Path:
    """One database (both backends) and one shared folder for every replica of the test."""
    folder = tmp_path / "shared"
    monkeypatch.setenv("TUNESERVE_SHARED_DIR", str(folder))
    return folder


def _sdk(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)


def _create(sdk: openai.OpenAI, **hp) -> str:
    data = "".join(json.dumps(r) + "\n" for r in CHAT_ROWS).encode()
    file_id = sdk.files.create(file=("t.jsonl", data), purpose="fine-tune").id
    return sdk.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}}).id


def _events(job_id: str) -> list[str]:
    events, _ = jobs_store().list_events(job_id, limit=1000)
    return [e["message"] for e in reversed(events)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (reaped by its parent a moment later).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_every_job_runs_exactly_once_across_two_replicas(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.02")
    apps = [build_jobs_app(tmp_path, replica_id=f"replica-{n}", lease_s=5) for n in (1, 2)]
    with ExitStack() as stack:
        sdks = [_sdk(stack.enter_context(TestClient(app))) for app in apps]
        jobs = [_create(sdks[n % 2], max_steps=4) for n in range(6)]
        for sdk in sdks:  # both replicas list every job, whichever created it
            assert {j.id for j in sdk.fine_tuning.jobs.list(limit=20)} == set(jobs)
        store = jobs_store()
        wait_for(lambda: all(store.get_job(j)["status"] in TERMINAL for j in jobs), timeout=60)
    for job_id in jobs:
        job = store.get_job(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert _events(job_id).count("Fine-tuning job started.") == 1
    served = [name for app in apps for name, _ in app.state.loaded]
    assert sorted(served) == sorted(store.get_job(j)["fine_tuned_model"] for j in jobs)
    owners = {store.get_job(j)["claimed_by"].split(":")[0] for j in jobs}
    assert owners <= {"replica-1", "replica-2"}


def test_a_supervisor_that_lost_its_lease_kills_its_worker_and_writes_nothing(
        shared, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    app = build_jobs_app(tmp_path, replica_id="replica-1", lease_s=5)
    with TestClient(app) as http:
        job_id = _create(_sdk(http), max_steps=200, save_steps=200)
        store = jobs_store()
        pid = wait_for(lambda: store.get_job(job_id)["pid"])
        # Another claimer takes the job over, as if this supervisor's lease had run out.
        store.update_job(job_id, lease_until=now() - 1)
        thief = store.claim_next("replica-2:1:abcd", lease_s=60)
        assert thief["id"] == job_id
        wait_for(lambda: not _alive(pid), timeout=10)
        events_then = _events(job_id)
    job = store.get_job(job_id)
    # The job is the thief's: still running under its claim, no outcome written by replica 1
    # (not even when its own shutdown stopped the supervisor).
    assert job["status"] == "running" and job["claimed_by"] == "replica-2:1:abcd"
    assert job["error"] is None and not app.state.loaded
    assert _events(job_id) == events_then


def test_recovery_settles_only_this_replicas_jobs(shared, tmp_path):
    store = jobs_store()
    mine, live, expired = "replica-1:999:dead", "replica-2:1:live", "replica-3:1:gone"
    for job_id, owner, lease in (("ftjob-mine", mine, now() + 60),
                                 ("ftjob-live", live, now() + 60),
                                 ("ftjob-expired", expired, now() - 5)):
        store.add_job({"id": job_id, "created_at": now(), "model": BASE_ID,
                       "training_file": "file-1", "seed": 1, "status": "running",
                       "hyperparameters": {}, "method": {}, "attempts": 1,
                       "claimed_by": owner, "lease_until": lease,
                       "train_config": {"base_model": str(tmp_path), "name": job_id,
                                        "output_dir": str(tmp_path / job_id),
                                        "datasets": [{"path": str(tmp_path / "d.jsonl")}]}})
    JobSupervisor(store, JobsSettings(replica_id="replica-1", enabled=False)).recover()
    # This replica's previous process left its job: settled at once (no checkpoint: failed).
    assert store.get_job("ftjob-mine")["status"] == "failed"
    assert "no checkpoint" in store.get_job("ftjob-mine")["error"]["message"]
    # Another live replica's job and a dead replica's job are left to their leases.
    for job_id, owner in (("ftjob-live", live), ("ftjob-expired", expired)):
        job = store.get_job(job_id)
        assert job["status"] == "running" and job["claimed_by"] == owner


def test_a_dead_replicas_job_is_taken_over_from_its_newest_checkpoint(
        shared, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.02")
    creator = build_jobs_app(tmp_path, replica_id="replica-1", enabled=False)
    with TestClient(creator) as http:
        job_id = _create(_sdk(http), max_steps=6, save_steps=2)
    store = jobs_store()
    # Replica 1 claimed it, trained to a checkpoint at step 4 and died (kill -9 of the pod).
    claimed = store.claim_next("replica-1:42:dead", lease_s=60)
    (checkpoints_dir(claimed) / "checkpoint-4").mkdir(parents=True)
    (checkpoints_dir(claimed) / "checkpoint-4" / "trainer_state.json").write_text("{}")
    store.update_job(job_id, lease_until=now() - 1)
    with TestClient(build_jobs_app(tmp_path, replica_id="replica-2", lease_s=5)):
        wait_for(lambda: store.get_job(job_id)["status"] in TERMINAL, timeout=30)
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["claimed_by"].startswith("replica-2:")
    events = _events(job_id)
    assert any("replica-1:42:dead" in m and "took the job over" in m for m in events)
    assert "Resuming training from checkpoint at step 4." in events
    assert "Fine-tuning job started." not in events  # never started again from scratch


def test_a_cancel_on_another_replica_stops_the_running_job(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    runner = build_jobs_app(tmp_path, replica_id="replica-1", lease_s=5)
    # Replica 2 serves the API only (TUNESERVE_JOBS_ENABLED=false), as a serving pod does.
    other = build_jobs_app(tmp_path, replica_id="replica-2", enabled=False)
    with TestClient(runner) as http1, TestClient(other) as http2:
        job_id = _create(_sdk(http1), max_steps=200, save_steps=200)
        store = jobs_store()
        pid = wait_for(lambda: store.get_job(job_id)["pid"])
        assert _sdk(http2).fine_tuning.jobs.cancel(job_id).status == "running"  # pending
        wait_for(lambda: store.get_job(job_id)["status"] == "cancelled", timeout=15)
        assert not _alive(pid)
    assert "Job cancelled." in _events(job_id)


def test_the_worker_trains_what_an_api_only_replica_queued(shared, tmp_path, monkeypatch):
    import asyncio

    from service.jobs.worker import run_worker

    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.02")
    api = build_jobs_app(tmp_path, enabled=False)
    with TestClient(api) as http:
        job_id = _create(_sdk(http), max_steps=4)
    published: list[tuple[str, Path]] = []

    async def publish(job, adapter):
        published.append((job["fine_tuned_model"], adapter))

    async def main():
        stop = asyncio.Event()
        settings = JobsSettings(train_command=api.state.jobs_supervisor.settings.train_command,
                                poll_interval_s=0.05, replica_id="worker-1")
        worker = asyncio.create_task(run_worker(settings, stop=stop, on_success=publish))
        store = jobs_store()
        while store.get_job(job_id)["status"] not in TERMINAL:
            await asyncio.sleep(0.05)
        stop.set()
        await worker

    asyncio.run(asyncio.wait_for(main(), 60))
    job = jobs_store().get_job(job_id)
    assert job["status"] == "succeeded" and job["claimed_by"].startswith("worker-1:")
    assert published == [(job["fine_tuned_model"], Path(job["adapter_path"]))]
    # No engine here: the verdict is left to a serving replica, which claims it from the table.
    assert job["evaluation"] == {"status": "pending"}


def test_tuneserve_worker_claims_jobs_and_requeues_on_sigterm(shared, tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    api = build_jobs_app(tmp_path, enabled=False)
    with TestClient(api) as http:
        job_id = _create(_sdk(http), max_steps=200, save_steps=2)
    env = {**os.environ, "TUNESERVE_JOBS_POLL_INTERVAL_S": "0.1",
           "TUNESERVE_JOBS_REPLICA_ID": "worker-cli",
           "TUNESERVE_JOBS_TRAIN_COMMAND": json.dumps(
               api.state.jobs_supervisor.settings.train_command)}
    worker = subprocess.Popen([sys.executable, "-m", "tuneserve.cli", "worker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        store = jobs_store()
        wait_for(lambda: store.list_checkpoints(job_id)[0], timeout=60)
        assert store.get_job(job_id)["claimed_by"].startswith("worker-cli:")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    job = store.get_job(job_id)
    assert job["status"] == "queued", job  # resumes from its checkpoint on the next claim


def test_the_lease_is_kept_while_a_slow_adapter_registration_runs(shared, tmp_path,
                                                                   monkeypatch):
    # Registering the adapter (a hot-load, a copy to the shared store) may outlast the lease:
    # the other replica must not take the finished job over meanwhile.
    import asyncio

    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.02")

    async def slow_registration(job, adapter):
        await asyncio.sleep(3)

    apps = [build_jobs_app(tmp_path, replica_id=f"replica-{n}", lease_s=2,
                           on_success=slow_registration) for n in (1, 2)]
    with ExitStack() as stack:
        sdks = [_sdk(stack.enter_context(TestClient(app))) for app in apps]
        job_id = _create(sdks[0], max_steps=2)
        store = jobs_store()
        wait_for(lambda: store.get_job(job_id)["status"] in TERMINAL, timeout=30)
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert _events(job_id).count("The job has successfully completed.") == 1
