"""The audit log against the real app (fake engine): adapter, alias and batch changes are
recorded with the caller's role, project and key id, never the key; admins read it."""

from __future__ import annotations

import json
from pathlib import Path

from service.audit import key_id
from tests.unit.service_lora import make_lora_adapter
from tests.unit.test_batches import _chat

ADMIN, USER = "audit-admin-key-0123456789", "audit-user-key-0123456789"


def test_changes_are_audited_by_key_id_never_key(server_factory, tiny_model_dir, tmp_path,
                                                  isolated_home):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": ADMIN, "project": "ops", "role": "admin"},
                                              {"key": USER, "project": "team-a"}]}))
    server = server_factory(engine_kw={"stall_after": 0}, api_keys_file=keys_file)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    user = {"Authorization": f"Bearer {USER}"}
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "lora")
    http = server.http
    assert http.post("/v1/adapters", headers=admin,
                     json={"name": "lora", "path": str(adapter)}).status_code == 201
    assert http.post("/v1/aliases/prod/promote", headers=admin,
                     json={"adapter": "lora", "reason": "beats base"}).status_code == 200
    upload = http.post("/v1/files", headers=user, data={"purpose": "batch"},
                       files={"file": ("in.jsonl", json.dumps(_chat("a")).encode())}).json()
    batch = http.post("/v1/batches", headers=user, json={
        "input_file_id": upload["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"}).json()
    assert http.post(f"/v1/batches/{batch['id']}/cancel", headers=user).status_code == 200
    assert http.delete("/v1/aliases/prod", headers=admin).status_code == 200
    assert http.delete("/v1/adapters/lora", headers=admin).status_code == 200
    # A refused change is not an action: nothing recorded.
    assert http.delete("/v1/adapters/lora", headers=user).status_code == 403

    assert http.get("/v1/audit", headers=user).status_code == 403
    entries = http.get("/v1/audit", headers=admin).json()["data"]
    assert [(e["action"], e["target"]) for e in reversed(entries)] == [
        ("adapter.add", "lora"), ("alias.promote", "prod"), ("batch.create", batch["id"]),
        ("batch.cancel", batch["id"]), ("alias.delete", "prod"), ("adapter.remove", "lora")]
    by_action = {e["action"]: e for e in entries}
    assert by_action["adapter.add"]["key_id"] == key_id(ADMIN)
    assert by_action["adapter.add"]["role"] == "admin"
    assert by_action["batch.create"]["key_id"] == key_id(USER)
    assert by_action["batch.create"]["project"] == "team-a"
    assert by_action["alias.promote"]["reason"] == "beats base"
    log = (isolated_home / "audit" / "audit.jsonl").read_text()
    assert ADMIN not in log and USER not in log


def test_server_without_keys_audits_anonymous_actions(server_factory):
    server = server_factory()
    upload = server.upload([_chat("a")])
    batch = server.sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    entries = server.http.get("/v1/audit").json()["data"]
    assert entries[0]["action"] == "batch.create" and entries[0]["target"] == batch.id
    assert entries[0]["key_id"] is None and entries[0]["project"] == "default"


def test_job_creators_admin_keeps_jobs_an_admin_decision(server_factory, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("TUNESERVE_JOBS_ENABLED", "0")  # jobs stay queued: nothing trains
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": ADMIN, "project": "ops", "role": "admin"},
                                              {"key": USER, "project": "team-a"}]}))
    server = server_factory(api_keys_file=keys_file, job_creators="admin")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    user = {"Authorization": f"Bearer {USER}"}
    rows = "".join(json.dumps({"messages": [
        {"role": "user", "content": f"question {i}"},
        {"role": "assistant", "content": f"answer {i}"}]}) + "\n" for i in range(12))
    upload = server.http.post("/v1/files", headers=user, data={"purpose": "fine-tune"},
                              files={"file": ("train.jsonl", rows.encode())}).json()
    body = {"model": "tiny", "training_file": upload["id"]}
    refused = server.http.post("/v1/fine_tuning/jobs", headers=user, json=body)
    assert refused.status_code == 403 and "TUNESERVE_JOB_CREATORS" in refused.text
    job = server.http.post("/v1/fine_tuning/jobs", headers=admin, json=body)
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    assert server.http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel",
                            headers=admin).status_code == 200
    entries = server.http.get("/v1/audit", headers=admin).json()["data"]
    assert [(e["action"], e["target"], e["key_id"]) for e in entries[:2]] == [
        ("job.cancel", job_id, key_id(ADMIN)), ("job.create", job_id, key_id(ADMIN))]
    assert entries[1]["training_file"] == upload["id"]
