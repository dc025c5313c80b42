"""Projects on the real app (fake engine): files, jobs, batches and adapters are owned by
a project; another project's are 404 as if absent (list, retrieve, delete, cancel, content,
inference with the model id), they do not show in ``/v1/models`` or in metrics labels, and
admins see everything. The real-engine acceptance test is
tests/integration/test_tenancy_server.py."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import openai
import pytest

from service.adapters.checks import BaseModelShape
from service.adapters.registry import AdapterRegistry
from tests.unit.jobs_app import FAKE_TRAINER
from tests.unit.service_fake_engine import FakeEngine
from tests.unit.service_lora import make_lora_adapter

KEYS = {"a": "project-a-key-0123456789", "b": "project-b-key-0123456789",
        "admin": "admin-key-0123456789"}
ROWS = "".join(json.dumps({"messages": [
    {"role": "user", "content": f"question {i}"},
    {"role": "assistant", "content": f"answer {i}"}]}) + "\n" for i in range(12)).encode()


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("tenancy") / "a")


@pytest.fixture
def projects(server_factory, tmp_path, monkeypatch, tiny_adapter):
    """The app with keys of projects a and b and an admin; jobs train with the fake trainer,
    which writes a real adapter, so a job's adapter is really served."""
    monkeypatch.setenv("TUNESERVE_JOBS_TRAIN_COMMAND", json.dumps([sys.executable,
                                                                   str(FAKE_TRAINER)]))
    monkeypatch.setenv("TUNESERVE_JOBS_POLL_INTERVAL_S", "0.05")
    monkeypatch.setenv("TUNESERVE_JOBS_EVALUATE_ON_SUCCESS", "0")
    monkeypatch.setenv("FAKE_TRAIN_ADAPTER_FROM", str(tiny_adapter))
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"key": KEYS["a"], "project": "a"}, {"key": KEYS["b"], "project": "b"},
        {"key": KEYS["admin"], "project": "ops", "role": "admin"}]}))
    server = server_factory(api_keys_file=keys_file)

    def sdk(who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS[who],
                             http_client=server.http, max_retries=0)

    server.as_ = sdk
    return server


def _not_found(call) -> str:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    return caught.value.message


def _upload(sdk: openai.OpenAI, data: bytes = ROWS, purpose: str = "fine-tune") -> str:
    return sdk.files.create(file=("train.jsonl", io.BytesIO(data)), purpose=purpose).id


def _succeeded(sdk: openai.OpenAI, job_id: str):
    deadline = time.monotonic() + 60
    while (job := sdk.fine_tuning.jobs.retrieve(job_id)).status != "succeeded":
        assert job.status not in ("failed", "cancelled"), job.error
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.05)
    return job


def test_files_and_jobs_are_absent_for_another_project(projects):
    a, b, admin = projects.as_("a"), projects.as_("b"), projects.as_("admin")
    file_id = _upload(a)
    absent = _not_found(lambda: b.files.retrieve("file-doesnotexist"))
    assert [f.id for f in a.files.list().data] == [file_id]
    assert b.files.list().data == []
    assert _not_found(lambda: b.files.retrieve(file_id)) == absent.replace("file-doesnotexist",
                                                                           file_id)
    _not_found(lambda: b.files.content(file_id))
    _not_found(lambda: b.files.delete(file_id))
    # B cannot train on A's file: the same refusal as for a file that does not exist.
    with pytest.raises(openai.BadRequestError) as refused:
        b.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    assert "no such file" in refused.value.message

    job = a.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    _not_found(lambda: b.fine_tuning.jobs.cancel(job.id))
    for call in (lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id),
                 lambda: b.fine_tuning.jobs.checkpoints.list(job.id)):
        _not_found(call)
    assert b.fine_tuning.jobs.list().data == []
    assert b.fine_tuning.jobs.list(after=job.id).data == []  # a foreign cursor: as unknown
    assert _succeeded(a, job.id).status == "succeeded"  # B's cancel did nothing

    assert file_id in {f.id for f in admin.files.list().data}
    assert admin.fine_tuning.jobs.retrieve(job.id).id == job.id
    b_file = _upload(b)
    assert {f.id for f in admin.files.list().data} >= {file_id, b_file}
    # An admin's job on B's file is B's: B sees and cancels it, A does not see it.
    for_b = admin.fine_tuning.jobs.create(model="tiny", training_file=b_file)
    assert [j.id for j in b.fine_tuning.jobs.list().data] == [for_b.id]
    _not_found(lambda: a.fine_tuning.jobs.retrieve(for_b.id))
    assert b.fine_tuning.jobs.cancel(for_b.id).id == for_b.id
    deadline = time.monotonic() + 30
    while b.fine_tuning.jobs.retrieve(for_b.id).status != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert a.files.content(file_id).content == ROWS
    assert a.files.delete(file_id).deleted


def test_a_jobs_adapter_is_private_to_its_project_until_published(projects):
    a, b, admin = projects.as_("a"), projects.as_("b"), projects.as_("admin")
    job = _succeeded(a, a.fine_tuning.jobs.create(model="tiny", training_file=_upload(a)).id)
    model = job.fine_tuned_model
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    assert model in {m.id for m in a.models.list().data}
    assert model in {m.id for m in admin.models.list().data}
    assert model not in {m.id for m in b.models.list().data}
    assert [x["name"] for x in projects.http.get(
        "/v1/adapters", headers={"Authorization": f"Bearer {KEYS['b']}"}).json()["data"]] == []
    absent = _not_found(lambda: b.chat.completions.create(model="ft:nothing", **chat))
    assert _not_found(lambda: b.chat.completions.create(model=model, **chat)) == \
        absent.replace("ft:nothing", model)
    _not_found(lambda: b.models.retrieve(model))
    _not_found(lambda: b.completions.create(model=model, prompt="hi", max_tokens=4))
    _not_found(lambda: b.responses.create(model=model, input="hi", max_output_tokens=4))
    assert projects.http.get(f"/v1/adapters/{model}", headers={
        "Authorization": f"Bearer {KEYS['b']}"}).status_code == 404

    # B's batch naming A's model gets the 404 per request, as online.
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, **chat}}
    batch = b.batches.create(input_file_id=_upload(b, json.dumps(line).encode() + b"\n",
                                                   "batch"),
                             endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while (batch := b.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.02)
    [error] = [json.loads(x) for x in b.files.content(batch.error_file_id).text.splitlines()]
    assert error["response"]["status_code"] == 404
    assert batch.output_file_id is None

    # No metrics label names A's model for B's refused requests.
    metrics = {"Authorization": f"Bearer {KEYS['admin']}"}
    assert model not in projects.http.get("/metrics", headers=metrics).text
    assert a.chat.completions.create(model=model, **chat).choices
    assert f'model="{model}"' in projects.http.get("/metrics", headers=metrics).text

    # The gate's refusal names the candidate: only its project (and admins) see that.
    projects.http.app.state.registry.refuse("prod", model, actor="gate", reason="worse")
    alias = {who: projects.http.get("/v1/aliases/prod", headers={
        "Authorization": f"Bearer {KEYS[who]}"}) for who in ("a", "b")}
    assert [d["adapter"] for d in alias["a"].json()["decisions"]] == [model]
    assert alias["b"].status_code == 404 and model not in alias["b"].text

    published = projects.http.post(f"/v1/adapters/{model}/publish", headers={
        "Authorization": f"Bearer {KEYS['admin']}"})
    assert published.status_code == 200 and published.json()["shared"] is True
    assert model in {m.id for m in b.models.list().data}
    assert b.chat.completions.create(model=model, **chat).choices
    audit = projects.http.get("/v1/audit", headers={
        "Authorization": f"Bearer {KEYS['admin']}"}).json()["data"]
    assert (audit[0]["action"], audit[0]["target"], audit[0]["owner"]) == (
        "adapter.publish", model, "a")


def test_publishing_needs_an_admin_key(projects):
    response = projects.http.post("/v1/adapters/anything/publish", headers={
        "Authorization": f"Bearer {KEYS['a']}"})
    assert response.status_code == 403


async def test_adapters_registered_before_projects_stay_shared(tmp_path, tiny_model_dir,
                                                               tiny_adapter):
    db_path = tmp_path / "registry.sqlite"
    with sqlite3.connect(db_path) as db:  # the first release's table, one adapter in it
        db.execute("CREATE TABLE adapters (name TEXT PRIMARY KEY, path TEXT NOT NULL, "
                   "base_model TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL, "
                   "target_modules TEXT NOT NULL, source TEXT NOT NULL, created INTEGER NOT "
                   "NULL, manifest TEXT, owned_path INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO adapters VALUES ('old', ?, 'tiny', 8, 16, '[]', 'api', 1, "
                   "NULL, 0)", (str(shutil.copytree(tiny_adapter, tmp_path / "old")),))
    engine = FakeEngine(model_path=tiny_model_dir, tokenizer=None)
    registry = AdapterRegistry(db_path, engine, BaseModelShape.from_checkpoint(
        "tiny", tiny_model_dir), max_lora_rank=16)
    try:
        assert await registry.restore() == []
        record = registry.get("old")
        assert (record.project, record.shared) == ("default", True)
        assert [r.name for r in registry.list("b")] == ["old"]
        await registry.add("mine", tiny_adapter, project="a", shared=False)
        assert [r.name for r in registry.list("b")] == ["old"]
        assert {r.name for r in registry.list("a")} == {"old", "mine"}
    finally:
        registry.close()


def test_a_jobs_evaluation_uses_a_key_that_sees_the_jobs_private_adapter():
    from types import SimpleNamespace

    from service.tenancy import project_eval_key

    settings = SimpleNamespace(user_api_keys=[KEYS["b"], KEYS["a"]],
                               admin_api_keys=[KEYS["admin"]],
                               key_projects={KEYS["a"]: "a", KEYS["b"]: "b"})
    assert project_eval_key(settings, "a") == KEYS["a"]  # least privilege: A's own key
    assert project_eval_key(settings, "c") == KEYS["admin"]  # no key of C: an admin key
    assert project_eval_key(SimpleNamespace(user_api_keys=[], admin_api_keys=[],
                                            key_projects={}), "a") is None
