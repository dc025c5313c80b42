"""Jobs survive worker deaths and service restarts: resumed from the last checkpoint or
failed with a reason, never left ``running``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, CHAT_ROWS, build_jobs_app, wait_for

from service.jobs.store import now

TERMINAL = {"succeeded", "failed", "cancelled"}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _sdk(http):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)


def _create(sdk, **hp):
    file_id = sdk.files.create(file=("t.jsonl", _jsonl(CHAT_ROWS)), purpose="fine-tune").id
    return sdk.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}})


def _finished(sdk, job_id, timeout=20):
    return wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j,
                    timeout=timeout)


@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_worker_killed_mid_job_resumes_or_fails(isolated_home, tmp_path, monkeypatch,
                                                with_checkpoint):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    app = build_jobs_app(tmp_path)
    with TestClient(app) as http:
        sdk = _sdk(http)
        job = _create(sdk, max_steps=12, save_steps=3 if with_checkpoint else 100)
        store = app.state.jobs_store
        if with_checkpoint:
            wait_for(lambda: list(sdk.fine_tuning.jobs.checkpoints.list(job.id)))
        else:
            wait_for(lambda: (store.get_job(job.id) or {}).get("pid"))
        os.killpg(store.get_job(job.id)["pid"], signal.SIGKILL)
        done = _finished(sdk, job.id)
        events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("killed by signal 9" in m for m in events)
        if with_checkpoint:
            assert done.status == "succeeded", done.error
            assert any(m.startswith("Resuming training from checkpoint") for m in events)
        else:
            assert done.status == "failed"
            assert "killed by signal 9" in done.error.message
            assert "no checkpoint" in done.error.message


def test_graceful_restart_requeues_and_resumes(isolated_home, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    app = build_jobs_app(tmp_path)
    with TestClient(app) as http:
        sdk = _sdk(http)
        job = _create(sdk, max_steps=10, save_steps=2)
        wait_for(lambda: list(sdk.fine_tuning.jobs.checkpoints.list(job.id)))
    assert app.state.jobs_store.get_job(job.id)["status"] == "queued"
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.01")
    with TestClient(build_jobs_app(tmp_path)) as http:
        sdk = _sdk(http)
        done = _finished(sdk, job.id)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("resumed from step" in m for m in messages)  # the worker's own log line


@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_crashed_service_leftover_job_is_settled_on_start(isolated_home, tmp_path,
                                                          with_checkpoint):
    # A service that crashed mid-job leaves the row `running` and its worker alive.
    app = build_jobs_app(tmp_path, enabled=False)
    with TestClient(app) as http:
        job = _create(_sdk(http), max_steps=4, save_steps=2)
    store = app.state.jobs_store
    run_dir = store.runs_dir / job.id
    run_dir.mkdir(parents=True)
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(run_dir / "train.yaml")],
        start_new_session=True)
    store.update_job(job.id, status="running", pid=leftover.pid, attempts=1)
    if with_checkpoint:
        ckpt = store.runs_dir / job.id / "output" / ".checkpoints" / job.id / "checkpoint-2"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")
    try:
        with TestClient(build_jobs_app(tmp_path)) as http:
            assert leftover.wait(timeout=5) == -signal.SIGKILL  # the orphan worker is gone
            done = _finished(_sdk(http), job.id)
            if with_checkpoint:
                assert done.status == "succeeded", done.error
            else:
                assert done.status == "failed"
                assert "service stopped while the job was running" in done.error.message
    finally:
        if leftover.poll() is None:
            leftover.kill()


def test_supervisor_error_while_watching_fails_the_job_and_stops_its_worker(
        isolated_home, tmp_path, monkeypatch):
    # A bug or store error inside the poll loop must not leave the job `running` with an
    # orphaned worker: the job fails with the reason and the worker's group is stopped.
    from service.jobs.supervisor import JobSupervisor

    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.5")  # the worker would run for ~30 s
    pids: list[int] = []

    def broken_record_checkpoints(self, job, run):
        pids.append(run.process.pid)
        raise RuntimeError("checkpoint folder unreadable")

    monkeypatch.setattr(JobSupervisor, "_record_checkpoints", broken_record_checkpoints)
    app = build_jobs_app(tmp_path)
    with TestClient(app) as http:
        sdk = _sdk(http)
        job = _create(sdk, max_steps=60)
        done = _finished(sdk, job.id)
        assert done.status == "failed"
        assert done.error.code == "supervisor_error"
        assert "checkpoint folder unreadable" in done.error.message
        with pytest.raises(ProcessLookupError):  # the worker's group is gone (and reaped)
            os.killpg(pids[0], 0)
        events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("checkpoint folder unreadable" in m for m in events)


def test_max_concurrent_holds_when_jobs_are_queued_together(isolated_home, tmp_path,
                                                            monkeypatch):
    # Both jobs are queued before the supervisor looks: it must claim one, not both.
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    app = build_jobs_app(tmp_path, enabled=False)
    with TestClient(app) as http:
        sdk = _sdk(http)
        first, second = _create(sdk, max_steps=30), _create(sdk, max_steps=30)
    with TestClient(build_jobs_app(tmp_path, max_concurrent=1)) as http:
        sdk = _sdk(http)
        wait_for(lambda: sdk.fine_tuning.jobs.retrieve(first.id).status == "running")
        assert sdk.fine_tuning.jobs.retrieve(second.id).status == "queued"
        sdk.fine_tuning.jobs.cancel(first.id)
        sdk.fine_tuning.jobs.cancel(second.id)


async def test_store_waits_off_the_event_loop(isolated_home, tmp_path, monkeypatch):
    # Another connection (the CLI, a second service) holds the write lock. A cancel must
    # wait for it in a worker thread: the event loop keeps running and here releases the
    # lock. A store call made on the loop would block it until SQLite gives up.
    import sqlite3

    from service.jobs.settings import JobsSettings
    from service.jobs.store import JobStore, now
    from service.jobs.supervisor import JobSupervisor
    from tuneserve import database

    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_S", 2)  # fail fast without the fix
    store = JobStore(tmp_path / "jobs")
    store.add_job({"id": "ftjob-1", "created_at": now(), "model": BASE_ID,
                   "training_file": "file-1", "seed": 1, "status": "queued",
                   "hyperparameters": {}, "method": {}, "train_config": {}})
    supervisor = JobSupervisor(store, JobsSettings(enabled=False))
    writer = sqlite3.connect(store.db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    cancel = asyncio.create_task(supervisor.cancel("ftjob-1"))
    await asyncio.sleep(0)  # the cancel starts and meets the lock
    writer.execute("ROLLBACK")  # runs only if the loop was not blocked
    writer.close()
    assert (await cancel)["status"] == "cancelled"


def test_the_supervisor_holds_and_renews_the_running_jobs_lease(isolated_home, tmp_path,
                                                                monkeypatch):
    # The job is claimed under the supervisor's owner id, and its lease keeps moving while
    # the worker runs (a supervisor that stopped renewing would lose it to another claimer).
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.2")
    app = build_jobs_app(tmp_path)
    with TestClient(app) as http:
        sdk = _sdk(http)
        job = _create(sdk, max_steps=100, save_steps=100)
        store = app.state.jobs_store
        wait_for(lambda: (store.get_job(job.id) or {}).get("pid"))
        running = store.get_job(job.id)
        assert running["claimed_by"] == app.state.jobs_supervisor.owner
        assert running["lease_until"] >= now() + 30
        wait_for(lambda: store.get_job(job.id)["lease_until"] > running["lease_until"])
        sdk.fine_tuning.jobs.cancel(job.id)
        assert _finished(sdk, job.id).status == "cancelled"
