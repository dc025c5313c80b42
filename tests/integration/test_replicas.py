"""Two real ``tuneserve serve`` replicas (tiny model, vLLM engine each) on one real
PostgreSQL and one shared folder, with a short job lease: every job is listed by both,
claimed once, never trained by two workers at once, and survives kill -9 of training
processes and of a whole replica (taken over after its lease, resumed from its newest
checkpoint). The first job trains for real (``tuneserve train``); the chaos run of 20 jobs
uses the contract-#1 fake trainer inside the same real servers so it fits the time budget
(the supervisor, leases, database and API are the real ones either way). Every training
run holds a lock on its job (tests/integration/replicas_trainer.py): a second worker on
the same job at the same time leaves a ``CONCURRENT-*`` file, which fails the test.

A job's adapter, and an adapter uploaded to one replica, are served by both (the shared
adapter registry: each replica syncs with the database every 0.5 s here), and a removal on
one reaches the other. The same convergence on fake engines, both backends:
tests/unit/test_adapter_replicas.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from replicas_support import copy_logs, replica_train_command, start_replicas

from service.jobs.store import JobStore
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}
LEASE_S = 6
CONVERGE_S = 10.0  # the bound for an adapter to reach the other replica
ROWS = [{"messages": [{"role": "user", "content": f"stop container web-{i}"},
                      {"role": "assistant", "content": f"docker stop web-{i}"}]}
        for i in range(16)]


@pytest.fixture(scope="module")
def deployment(tiny_model_dir, postgres_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    shared, report = root / "shared", root / "report"
    shared.mkdir()
    report.mkdir()
    url = postgres_server.create_database()
    env = {
        "TUNESERVE_JOBS_LEASE_S": str(LEASE_S), "TUNESERVE_JOBS_POLL_INTERVAL_S": "0.3",
        "TUNESERVE_JOBS_MAX_RESUME_ATTEMPTS": "50", "TUNESERVE_JOBS_CANCEL_GRACE_S": "5",
        "TUNESERVE_SYNC_INTERVAL_S": "0.5",
        "TUNESERVE_JOBS_TRAIN_COMMAND": json.dumps(replica_train_command()),
        "REPLICAS_REPORT_DIR": str(report), "REPLICAS_FAKE_TRAINER": str(root / "use-fake"),
        "FAKE_TRAIN_STEP_S": "0.25",
        # The fake trainer's result: a real LoRA adapter of the tiny model, which the
        # replica's registry checks and hot-loads as it would a trained one.
        "FAKE_TRAIN_ADAPTER_FROM": str(make_lora_adapter(tiny_model_dir, root / "adapter")),
    }
    with start_replicas(2, model=tiny_model_dir, database_url=url, shared_dir=shared,
                        root=root, env=env) as servers:
        yield {"servers": servers, "url": url, "shared": shared, "report": report,
               "root": root}
        copy_logs(servers, report)


def _sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=8)


def _store(deployment) -> JobStore:
    return JobStore(deployment["shared"] / "jobs", url=deployment["url"])


def _upload(sdk) -> str:
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    return sdk.files.create(file=("docker.jsonl", data), purpose="fine-tune").id


def _events(store: JobStore, job_id: str) -> list[str]:
    events, _ = store.list_events(job_id, limit=10_000)
    return [e["message"] for e in reversed(events)]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s")


def test_a_job_is_listed_by_both_replicas_and_trained_once(deployment):
    one, two = (_sdk(s) for s in deployment["servers"])
    base = one.models.list().data[0].id
    job = one.fine_tuning.jobs.create(
        model=base, training_file=_upload(one), suffix="replicas",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "max_steps": 2, "lora_rank": 8}}})
    assert job.id in {j.id for j in two.fine_tuning.jobs.list(limit=50)}
    store = _store(deployment)
    done = _wait(lambda: (j := store.get_job(job.id))["status"] in TERMINAL and j, 240,
                 "the real training job")
    assert done["status"] == "succeeded", (done["error"], deployment["servers"][0].log_tail())
    assert two.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    # Its evaluation is claimed from the shared table by one replica: judged once, one verdict.
    judged = _wait(lambda: (j := two.fine_tuning.jobs.retrieve(job.id)).evaluation
                   and j.evaluation["status"] in ("done", "skipped", "failed") and j, 240,
                   "the job's verdict")
    assert judged.evaluation["status"] == "done", judged.evaluation
    assert "claim" not in judged.evaluation  # the replicas' lease is not part of the API
    events = _events(store, job.id)
    assert sum(m.startswith("Evaluating ") for m in events) == 1, events
    assert sum(m.startswith("Verdict: ") for m in events) == 1, events
    assert done["attempts"] == 1  # one claim
    assert events.count("Fine-tuning job started.") == 1
    assert not any(m.startswith("Resuming") for m in events)
    assert not list(deployment["report"].glob("CONCURRENT-*"))
    # Its adapter, registered by whichever replica trained it, answers on both.
    for sdk in (one, two):
        answer = _wait(lambda sdk=sdk: _chat(sdk, done["fine_tuned_model"]), CONVERGE_S,
                       "the job's adapter answering on both replicas")
        assert answer.model == done["fine_tuned_model"]


def _chat(sdk: openai.OpenAI, model: str):
    """A short greedy answer from ``model``; None while the replica does not serve it."""
    try:
        return sdk.chat.completions.create(model=model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "list"}])
    except openai.NotFoundError:
        return None


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname="adapter")
    return buffer.getvalue()


def test_an_adapter_uploaded_to_one_replica_serves_and_leaves_the_other(
        deployment, tiny_model_dir, tmp_path):
    one, two = deployment["servers"]
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "adapter")
    response = httpx.post(f"{one.base_url}/v1/adapters", data={"name": "uploaded"},
                          files={"file": ("adapter.tar.gz", _archive(adapter))}, timeout=120)
    assert response.status_code == 201, response.text
    sdk_two = _sdk(two)
    answer = _wait(lambda: _chat(sdk_two, "uploaded"), CONVERGE_S,
                   "the uploaded adapter answering on replica 2")
    assert answer.model == "uploaded" and answer.choices[0].message.content
    assert "uploaded" in {m.id for m in sdk_two.models.list().data}

    assert httpx.delete(f"{one.base_url}/v1/adapters/uploaded", timeout=60).status_code == 200
    _wait(lambda: _chat(sdk_two, "uploaded") is None, CONVERGE_S,
          "the removed adapter a 404 on replica 2")
    assert "uploaded" not in {m.id for m in sdk_two.models.list().data}


def test_twenty_jobs_survive_kills_of_workers_and_of_a_whole_replica(deployment):
    servers = deployment["servers"]
    (deployment["root"] / "use-fake").touch()  # the fake trainer from here on
    sdks = [_sdk(s) for s in servers]
    base = sdks[0].models.list().data[0].id
    files = [_upload(sdk) for sdk in sdks]
    store = _store(deployment)
    rng = random.Random(17)
    jobs, kills = [], {"worker": 0, "replica": 0}
    for n in range(20):
        jobs.append(sdks[n % 2].fine_tuning.jobs.create(
            model=base, training_file=files[n % 2],
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 4, "max_steps": 8, "save_steps": 2}}}).id)

    def running() -> list[dict]:
        return [j for j in map(store.get_job, jobs) if j["status"] == "running" and j["pid"]]

    def kill_worker() -> None:
        victims = running()
        if victims:
            victim = rng.choice(victims)
            try:
                os.killpg(victim["pid"], signal.SIGKILL)
                kills["worker"] += 1
            except ProcessLookupError:
                pass  # it finished meanwhile

    # A few random worker kills, then a whole replica dies (as a pod: server, engine and its
    # training process) while it trains, and comes back; then more worker kills.
    for _ in range(3):
        _wait(running, 60, "a running job")
        kill_worker()
        time.sleep(rng.uniform(0.5, 1.5))
    victim_server = rng.choice(servers)
    held = _wait(lambda: [j for j in running() if j["claimed_by"] and j["claimed_by"].startswith(
        _replica_prefix(store, victim_server))], 60, "a job on the victim replica")[0]
    victim_server.kill()
    with contextlib.suppress(ProcessLookupError):  # unless it finished meanwhile
        os.killpg(held["pid"], signal.SIGKILL)
    kills["replica"] += 1
    # The other replica takes the job over once the dead one's lease runs out. Bring the
    # victim back only after that: a replica that restarts sooner recovers its own job
    # itself (also right, but then no takeover is seen: the race CI hit).
    victim = _replica_prefix(store, victim_server)
    _wait(lambda: (j := store.get_job(held["id"]))["status"] in TERMINAL
          or not j["claimed_by"].startswith(victim), 120, "the held job taken over")
    victim_server.launch()
    for _ in range(3):
        _wait(running, 60, "a running job")
        kill_worker()
        time.sleep(rng.uniform(0.5, 1.5))
    victim_server.wait_ready(300)
    # The job the dead replica held was taken over by the other once its lease ran out.
    _wait(lambda: store.get_job(held["id"])["status"] in TERMINAL, 120, "the held job")

    final = _wait(lambda: (js := [store.get_job(j) for j in jobs])
                  and all(j["status"] in TERMINAL for j in js) and js, 180, "all 20 jobs")
    resumed = [j for j in final
               if any(m.startswith("Resuming training") for m in _events(store, j["id"]))]
    counts = {"created": len(jobs),
              "succeeded": sum(j["status"] == "succeeded" for j in final),
              "failed": sum(j["status"] == "failed" for j in final),
              "resumed": len(resumed), "worker_kills": kills["worker"],
              "replica_kills": kills["replica"],
              "claims": sum(j["attempts"] for j in final)}
    report = Path(deployment["report"]) / "replicas-report.json"
    report.write_text(json.dumps(counts, indent=2))
    print(f"replicas report ({report}): {counts}")

    assert counts["succeeded"] + counts["failed"] == 20  # none lost, none cancelled
    # A kill fails at most its one job (killed before its first checkpoint).
    assert counts["succeeded"] >= 20 - kills["worker"] - kills["replica"], counts
    for job in final:
        if job["status"] == "failed":  # a recorded reason: killed before any checkpoint
            assert "no checkpoint" in job["error"]["message"], job["error"]
        events = _events(store, job["id"])
        # One start, one resume per later claim: never two claims on one run.
        assert events.count("Fine-tuning job started.") == 1, job["id"]
        if job["status"] == "succeeded":
            assert events.count("The job has successfully completed.") == 1
    held_events = _events(store, held["id"])
    assert any("stopped renewing its lease" in m for m in held_events), held_events
    assert kills["replica"] == 1 and counts["resumed"] >= 1
    assert not list(deployment["report"].glob("CONCURRENT-*")), "two workers trained one job"
    for sdk in sdks:  # both replicas still list every job with its outcome
        listed = {j.id: j.status for j in sdk.fine_tuning.jobs.list(limit=100)}
        assert all(listed[j["id"]] == j["status"] for j in final)


def _replica_prefix(store: JobStore, server) -> str:
    """The owner-id prefix of ``server``'s supervisor (``<host>/<home hash>:``)."""
    import hashlib
    import socket

    home = hashlib.sha1(str(server.home.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{home}:"
