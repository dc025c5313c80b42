"""The job store (service/jobs/store.py) on both backends of the storage layer: files, jobs,
events, checkpoints, the leased claim, and a jobs file from before the layer adopted."""

from __future__ import annotations

import sqlite3
import threading

from service.jobs.store import JobStore, now


def _job(job_id: str, **fields) -> dict:
    return {"id": job_id, "created_at": now(), "model": "base", "training_file": "file-1",
            "seed": 1, "status": "queued", "hyperparameters": {"n_epochs": 1},
            "method": {"type": "supervised"}, "train_config": {"lr": 1e-4}, **fields}


def test_files_jobs_events_and_checkpoints_round_trip(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    for n in (2, 0, 1):  # same second: upload order is kept (not the ids' order)
        store.add_file(file_id=f"file-{n}", filename=f"{n}.jsonl", purpose="fine-tune", size=n,
                       path=tmp_path / f"{n}", rows=n, project="a" if n else "default")
    assert [f["id"] for f in store.list_files()] == ["file-2", "file-0", "file-1"]
    assert [f["id"] for f in store.list_files(project="a")] == ["file-2", "file-1"]
    assert store.delete_file("file-1") and not store.delete_file("file-1")
    assert store.get_file("file-1") is None

    for n in range(3):
        store.add_job(_job(f"ftjob-{n}", metadata=None if n else {"k": "v"}))
    job = store.get_job("ftjob-0")
    assert job["hyperparameters"] == {"n_epochs": 1} and job["metadata"] == {"k": "v"}
    assert store.get_job("ftjob-1")["metadata"] is None  # SQL NULL, not JSON 'null'
    assert job["project"] == "default" and job["attempts"] == 0 and job["cancel_requested"] == 0
    page, more = store.list_jobs(limit=2)
    assert [j["id"] for j in page] == ["ftjob-2", "ftjob-1"] and more
    page, more = store.list_jobs(after="ftjob-1")
    assert [j["id"] for j in page] == ["ftjob-0"] and not more
    assert store.update_job("ftjob-0", only_if_status={"queued"}, status="failed",
                            error={"code": "x", "message": "m"})
    assert not store.update_job("ftjob-0", only_if_status={"queued"}, status="running")
    assert store.get_job("ftjob-0")["error"] == {"code": "x", "message": "m"}
    assert [j["id"] for j in store.list_jobs(statuses=frozenset({"failed"}))[0]] == ["ftjob-0"]

    first = store.add_event("ftjob-0", "one", type="metrics", data={"step": 1})
    store.add_event("ftjob-0", "two")
    store.update_event(first["id"], message="one'", data={"step": 2})
    assert store.latest_metrics_event("ftjob-0")["data"] == {"step": 2}
    events, more = store.list_events("ftjob-0", limit=1)
    assert [e["message"] for e in events] == ["two"] and more
    assert [e["message"] for e in store.list_events("ftjob-0", after=events[0]["id"])[0]] == ["one'"]

    assert store.add_checkpoint("ftjob-0", 5, tmp_path / "c5", {"loss": 1.0})
    assert not store.add_checkpoint("ftjob-0", 5, tmp_path / "c5", {"loss": 1.0})  # once per step
    assert store.add_checkpoint("ftjob-0", 10, tmp_path / "c10", {"loss": 0.5})
    assert [c["step_number"] for c in store.list_checkpoints("ftjob-0")[0]] == [10, 5]


def test_claimers_in_threads_get_every_job_exactly_once(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    for n in range(24):
        store.add_job(_job(f"ftjob-{n:02d}"))
    owners = [f"w{n}" for n in range(4)]
    claimed: dict[str, list[str]] = {owner: [] for owner in owners}
    # A timeout: a claimer that fails must break the barrier, not hang the others.
    start, first_claimed = (threading.Barrier(len(owners), timeout=60) for _ in range(2))

    def claim(store: JobStore, owner: str) -> bool:
        job = store.claim_next(owner)
        if job is not None:
            claimed[owner].append(job["id"])
            assert job["status"] == "running" and job["claimed_by"] == owner
        return job is not None

    def work(owner: str) -> None:
        mine = JobStore(tmp_path / "jobs", url=database_url)
        start.wait()
        # Every claimer's first claim races the others' (the scheduler cannot let one
        # thread drain the queue alone: each waits here for all four first claims).
        claim(mine, owner)
        first_claimed.wait()
        while claim(mine, owner):
            pass

    threads = [threading.Thread(target=work, args=(owner,)) for owner in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every) == [f"ftjob-{n:02d}" for n in range(24)]  # each once, none lost
    assert all(claimed.values())  # four concurrent first claims got four different jobs
    for job_id in every:
        row = store.get_job(job_id)
        assert row["attempts"] == 1 and claimed[row["claimed_by"]].count(job_id) == 1


def test_a_claimer_that_stops_renewing_loses_the_job(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    store.add_job(_job("ftjob-a"))
    store.add_job(_job("ftjob-b"))
    assert store.claim_next("w1", lease_s=60)["id"] == "ftjob-a"  # oldest first
    assert store.claim_next("w2", lease_s=-1)["id"] == "ftjob-b"  # w2 dies: its lease is over
    assert store.renew_lease("ftjob-a", "w1")
    # w1's live lease keeps ftjob-a; w2's expired one hands ftjob-b to w3 (a resume: attempt 2).
    resumed = store.claim_next("w3")
    assert (resumed["id"], resumed["attempts"], resumed["claimed_by"]) == ("ftjob-b", 2, "w3")
    assert store.claim_next("w4") is None
    assert not store.renew_lease("ftjob-b", "w2")  # the dead worker may not take it back
    assert store.get_job("ftjob-b")["claimed_by"] == "w3"
    # A job re-queued (stopped service, resume) is claimable again whatever its old lease.
    store.update_job("ftjob-a", status="queued")
    assert store.claim_next("w5")["id"] == "ftjob-a"
    assert not store.renew_lease("ftjob-a", "w1")


def test_an_evaluation_is_claimed_once_and_taken_over_when_its_claim_runs_out(
        database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c"):
        store.add_job(_job(job_id, status="succeeded"))
    store.add_job(_job("ftjob-q"))  # queued: not trained, so nothing to evaluate
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-q"):
        store.update_evaluation(job_id, status="pending")
    store.update_evaluation("ftjob-c", status="done", verdict="beats the base")
    assert store.evaluations_to_run() == ["ftjob-a", "ftjob-b"]  # oldest first

    one, two = "replica-1:10:aa", "replica-2:20:bb"
    assert store.claim_evaluation("ftjob-a", one, lease_s=60)
    assert not store.claim_evaluation("ftjob-a", two, lease_s=60)  # one live claim
    assert not store.claim_evaluation("ftjob-c", two, lease_s=60)  # done: never again
    assert not store.claim_evaluation("ftjob-q", two, lease_s=60)  # not a succeeded job
    assert store.renew_evaluation("ftjob-a", one, lease_s=-1)  # ... then replica 1 dies
    assert store.claim_evaluation("ftjob-a", two, lease_s=60)  # its lease ran out
    assert not store.renew_evaluation("ftjob-a", one, lease_s=60)  # it must stop now
    assert store.get_job("ftjob-a")["evaluation"]["claim"]["owner"] == two

    # A restarted replica 2 (another process, same replica) takes its predecessor's at once.
    assert store.claim_evaluation("ftjob-a", "replica-2:21:cc", lease_s=60)
    store.update_evaluation("ftjob-a", status="done", verdict="does not beat the base")
    assert store.get_job("ftjob-a")["evaluation"] == {"status": "done",
                                                      "verdict": "does not beat the base"}
    assert store.renew_evaluation("ftjob-a", "replica-2:21:cc", lease_s=60)  # finished: no loss
    assert store.evaluations_to_run() == ["ftjob-b"]


def test_evaluators_in_threads_claim_each_evaluation_exactly_once(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    ids = [f"ftjob-{n:02d}" for n in range(12)]
    for job_id in ids:
        store.add_job(_job(job_id, status="succeeded"))
        store.update_evaluation(job_id, status="pending")
    won: dict[str, list[str]] = {f"r{n}:1:x": [] for n in range(4)}
    start = threading.Barrier(len(won), timeout=60)

    def work(owner: str) -> None:
        mine = JobStore(tmp_path / "jobs", url=database_url)
        start.wait()
        for job_id in ids:  # every evaluator tries every evaluation, as the loops do
            if mine.claim_evaluation(job_id, owner, lease_s=60):
                won[owner].append(job_id)

    threads = [threading.Thread(target=work, args=(owner,)) for owner in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for claimed in won.values() for j in claimed) == ids


# The jobs file of the first release: no project, result_files, evaluation or claim columns.
_LEGACY = """
CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, path TEXT NOT NULL, rows INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL, model TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL, status TEXT NOT NULL,
    hyperparameters TEXT NOT NULL, method TEXT NOT NULL, metadata TEXT,
    train_config TEXT NOT NULL, fine_tuned_model TEXT, finished_at INTEGER,
    trained_tokens INTEGER, error TEXT, pid INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, adapter_path TEXT,
    log_offset INTEGER NOT NULL DEFAULT 0);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, created_at INTEGER NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX events_job ON events(job_id, seq);
CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL, created_at INTEGER NOT NULL, step_number INTEGER NOT NULL,
    path TEXT NOT NULL, metrics TEXT NOT NULL, UNIQUE(job_id, step_number));
INSERT INTO files VALUES ('file-b', 'b.jsonl', 'fine-tune', 2, 7, '/f/b', 2, 0);
INSERT INTO files VALUES ('file-a', 'a.jsonl', 'fine-tune', 1, 7, '/f/a', 1, 0);
INSERT INTO jobs (id, created_at, model, training_file, seed, status, hyperparameters, method,
    metadata, train_config) VALUES ('ftjob-old', 7, 'base', 'file-b', 3, 'queued',
    '{"n_epochs": 2}', '{"type": "supervised"}', NULL, '{"lr": 0.1}');
INSERT INTO events (id, job_id, created_at, level, message, type, data)
    VALUES ('ftevent-old', 'ftjob-old', 7, 'info', 'Job created', 'message', NULL);
INSERT INTO checkpoints (id, job_id, created_at, step_number, path, metrics)
    VALUES ('ftckpt-old', 'ftjob-old', 8, 4, '/c/4', '{"loss": 2.0}');
"""


def test_a_jobs_file_from_before_the_storage_layer_is_adopted_in_place(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir()
    with sqlite3.connect(root / "jobs.sqlite") as db:
        db.executescript(_LEGACY)
    store = JobStore(root)
    # Old rows readable (JSON decoded, project 'default'), upload order kept.
    assert [f["id"] for f in store.list_files(project="default")] == ["file-b", "file-a"]
    job = store.get_job("ftjob-old")
    assert job["hyperparameters"] == {"n_epochs": 2} and job["project"] == "default"
    assert job["metadata"] is None and job["claimed_by"] is None
    assert store.list_jobs(project="a") == ([], False)
    assert [e["id"] for e in store.list_events("ftjob-old")[0]] == ["ftevent-old"]
    assert store.list_checkpoints("ftjob-old")[0][0]["metrics"] == {"loss": 2.0}
    # ...and the adopted file works as a new one: the old job is claimed, new rows follow.
    assert store.claim_next("w1")["id"] == "ftjob-old"
    store.add_file(file_id="file-c", filename="c.jsonl", purpose="fine-tune", size=1,
                   path=tmp_path / "c", rows=1)
    assert [f["id"] for f in store.list_files()][-1] == "file-c"
    assert store.add_checkpoint("ftjob-old", 8, tmp_path / "c8", {"loss": 1.0})
    assert not store.add_checkpoint("ftjob-old", 4, tmp_path / "c4", {})  # old UNIQUE kept
