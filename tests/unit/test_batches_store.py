"""The batches store on both storage backends: state, exactly-once answers, claims by
concurrent workers, and adoption of a batches file from before the storage layer."""

from __future__ import annotations

import sqlite3
import threading
import time

import sqlalchemy as sa

from service.batches.input import BatchLine
from service.batches.store import BatchStore


def _lines(n: int) -> list[BatchLine]:
    return [BatchLine(line=i, custom_id=f"r{i}", url="/v1/chat/completions",
                      body={"model": "tiny", "messages": [{"role": "user", "content": str(i)}]})
            for i in range(1, n + 1)]


def _add(store: BatchStore, batch_id: str, n: int) -> None:
    store.add(batch_id=batch_id, endpoint="/v1/chat/completions", input_file_id="file-1",
              completion_window="24h", metadata=None, expires_at=int(time.time()) + 3600)
    store.start(batch_id, _lines(n))


def test_batch_state_and_answers(database_url):
    store = BatchStore()
    assert store.url == database_url
    first = store.add(batch_id="b1", endpoint="/v1/chat/completions", input_file_id="file-1",
                      completion_window="24h", metadata={"k": "v"}, expires_at=10, project="p")
    assert first["status"] == "validating" and first["metadata"] == {"k": "v"}
    assert first["errors"] is None and first["project"] == "p"
    store.add(batch_id="b2", endpoint="/v1/chat/completions", input_file_id="file-2",
              completion_window="24h", metadata=None, expires_at=10)
    assert [b["id"] for b in store.list()] == ["b1", "b2"]
    assert store.get("b2")["metadata"] is None
    with sa.create_engine(database_url).connect() as db:  # SQL NULL, not the JSON text 'null'
        nulls = db.execute(sa.text("SELECT id FROM batches WHERE metadata IS NULL")).scalars()
        assert list(nulls) == ["b2"]

    store.start("b1", _lines(3))
    assert store.get("b1")["status"] == "in_progress"
    assert [r["body"]["messages"][0]["content"] for r in store.pending("b1")] == ["1", "2", "3"]
    assert store.finish_request("b1", 2, 200, {"status_code": 200, "body": {"a": 1}})
    assert not store.finish_request("b1", 2, 500, {"status_code": 500})  # answered once
    assert store.finish_request("b1", 3, 400, {"status_code": 400})
    assert [r["line"] for r in store.pending("b1")] == [1]
    assert store.answered("b1")[0]["response"] == {"status_code": 200, "body": {"a": 1}}
    assert store.counts("b1") == {"total": 3, "completed": 1, "failed": 1}

    assert store.next_active()["id"] == "b1"
    assert not store.set_status("b1", "cancelled", only_from=("cancelling",))
    assert store.set_status("b1", "failed", only_from=("in_progress",), errors={"data": []})
    failed = store.get("b1")
    assert failed["status"] == "failed" and failed["errors"] == {"data": []}
    assert failed["failed_at"] >= failed["created_at"]
    assert store.next_active()["id"] == "b2"


def test_two_claimers_get_every_request_exactly_once(database_url):
    _add(BatchStore(), "b", 120)
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}
    start = threading.Barrier(2)

    def work(owner: str) -> None:
        store = BatchStore()
        start.wait()
        while rows := store.claim("b", owner, limit=3):
            for row in rows:
                claimed[owner].append(row["line"])
                store.finish_request("b", row["line"], 200, {"by": owner})

    threads = [threading.Thread(target=work, args=(owner,)) for owner in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = claimed["w1"] + claimed["w2"]
    assert sorted(every) == list(range(1, 121))  # each claimed once, none lost
    assert claimed["w1"] and claimed["w2"]  # both worked: the claims really ran side by side
    assert BatchStore().counts("b") == {"total": 120, "completed": 120, "failed": 0}


def test_a_lease_keeps_others_out_until_it_expires(database_url):
    store = BatchStore()
    _add(store, "b", 4)
    held = store.claim("b", "w1", limit=2)
    assert [r["line"] for r in held] == [1, 2] and held[0]["claimed_by"] == "w1"
    assert [r["line"] for r in store.claim("b", "w2", limit=10)] == [3, 4]
    assert store.claim("b", "w3") == []  # every pending request is leased
    # w1 restarted under the same name takes its own requests back at once.
    assert [r["line"] for r in store.claim("b", "w1")] == [1, 2]
    # w2 died: once its lease is over (here: a lease that ended already), w3 gets its work.
    store.claim("b", "w2", lease_s=-1)
    assert [r["line"] for r in store.claim("b", "w3")] == [3, 4]


_LEGACY = """
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL,
    status TEXT NOT NULL, metadata TEXT, errors TEXT, output_file_id TEXT, error_file_id TEXT,
    in_progress_at INTEGER, expires_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
    failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
    project TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE batch_requests (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, url TEXT NOT NULL,
    body TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', status_code INTEGER,
    response TEXT, finished_at INTEGER, PRIMARY KEY (batch_id, line)
);
INSERT INTO batches (id, created_at, endpoint, input_file_id, completion_window, status,
    metadata, expires_at) VALUES ('batch-old', 1, '/v1/chat/completions', 'file-1', '24h',
    'in_progress', '{"k": "v"}', 99);
INSERT INTO batch_requests VALUES ('batch-old', 1, 'a', '/v1/chat/completions', '{"n": 1}',
    'done', 200, '{"status_code": 200}', 5);
INSERT INTO batch_requests (batch_id, line, custom_id, url, body)
    VALUES ('batch-old', 2, 'b', '/v1/chat/completions', '{"n": 2}');
"""


def test_a_batches_file_from_before_the_storage_layer_is_adopted(tmp_path):
    path = tmp_path / "batches.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_LEGACY)
    store = BatchStore(path)
    assert store.next_active()["metadata"] == {"k": "v"}
    assert [r["response"] for r in store.answered("batch-old")] == [{"status_code": 200}]
    assert [r["body"] for r in store.claim("batch-old", "w")] == [{"n": 2}]
    assert store.counts("batch-old") == {"total": 2, "completed": 1, "failed": 0}
