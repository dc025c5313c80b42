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
        "admin": "admin-key-0123456789", "metrics": "scrape-only-key-0123456789"}
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
        {"key": KEYS["admin"], "project": "ops", "role": "admin"},
        {"key": KEYS["metrics"], "role": "metrics"}]}))
    server = server_factory(api_keys_file=keys_file)

    def sdk(who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS[who],
                             http_client=server.http, max_retries=0)

    server.as_ = sdk
    return server


def _as(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


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


def _write_report(root: Path, report_id: str, model_ids: list[str] | None) -> None:
    """A report folder as ``tuneserve eval run`` leaves it (None: no readable record)."""
    folder = root / report_id
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>report</html>")
    if model_ids is not None:
        (folder / "report.json").write_text(json.dumps({
            "suite": "s", "models": [{"label": f"m{i}", "model_id": m}
                                     for i, m in enumerate(model_ids)]}))


def test_a_report_is_visible_only_when_every_model_it_names_is_the_callers(projects):
    from service.reports.eval_subprocess import app_reports_root

    a, admin = projects.as_("a"), projects.as_("admin")
    model = _succeeded(a, a.fine_tuning.jobs.create(model="tiny",
                                                    training_file=_upload(a)).id).fine_tuned_model
    root = app_reports_root(projects.http.app.state)
    _write_report(root, "of-a", ["tiny", model])  # names A's private adapter
    _write_report(root, "of-base", ["tiny"])
    _write_report(root, "of-gone", ["tiny", "ft:removed-long-ago"])  # owner unknown: admins'
    _write_report(root, "no-record", None)

    def listed(who: str) -> set[str]:
        response = projects.http.get("/reports", headers=_as(who))
        assert response.status_code == 200
        return {r["id"] for r in response.json()["data"]}

    assert listed("a") == {"of-a", "of-base"}
    assert listed("b") == {"of-base"}
    assert listed("admin") == {"of-a", "of-base", "of-gone", "no-record"}
    assert model not in projects.http.get("/reports", headers=_as("b")).text
    absent = projects.http.get("/reports/nothing/report.json", headers=_as("b"))
    for path in ("/reports/of-a/report.json", "/reports/of-a/report.html", "/reports/of-a",
                 "/reports/of-gone/report.json", "/reports/no-record/report.html"):
        hidden = projects.http.get(path, headers=_as("b"), follow_redirects=False)
        assert hidden.status_code == 404, path
        assert hidden.json()["error"]["code"] == absent.json()["error"]["code"]
        assert model not in hidden.text
    assert projects.http.get("/reports/of-a/report.json", headers=_as("a")).json()[
        "models"][1]["model_id"] == model
    # Once an admin publishes the adapter, every project may use it: the report is B's too.
    assert projects.http.post(f"/v1/adapters/{model}/publish",
                              headers=_as("admin")).status_code == 200
    assert listed("b") == {"of-a", "of-base"}
    assert admin.models.retrieve(model).id == model


def test_metrics_needs_an_admin_or_a_scrape_only_metrics_key(projects, server_factory):
    assert projects.http.get("/metrics").status_code == 401
    assert projects.http.get("/metrics", headers={"Authorization": "Bearer wrong-key-0123456789"}
                             ).status_code == 401
    refused = projects.http.get("/metrics", headers=_as("a"))
    assert refused.status_code == 403 and refused.json()["error"]["type"]
    for who in ("metrics", "admin"):
        scraped = projects.http.get("/metrics", headers=_as(who))
        assert scraped.status_code == 200 and "tuneserve_requests_total" in scraped.text
    # The metrics key reads /metrics and nothing else.
    for method, path in (("GET", "/v1/models"), ("GET", "/reports"), ("GET", "/v1/files"),
                         ("GET", "/v1/aliases"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/audit"), ("POST", "/v1/fine_tuning/jobs")):
        assert projects.http.request(method, path, headers=_as("metrics"),
                                     json={}).status_code == 403, path


def test_metrics_stay_open_on_a_server_without_keys(server_factory):
    assert server_factory().http.get("/metrics").status_code == 200


def test_an_alias_a_job_made_is_its_projects_and_invisible_to_others(projects):
    a, b, admin = projects.as_("a"), projects.as_("b"), projects.as_("admin")
    model = _succeeded(a, a.fine_tuning.jobs.create(model="tiny",
                                                    training_file=_upload(a)).id).fine_tuned_model
    registry = projects.http.app.state.registry
    registry.promote("team-a", model, actor="job:x", reason="passes", project="a")
    assert registry.get(model).shared is False  # promoting to A's own alias shares nothing
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert a.chat.completions.create(model="team-a", **chat).choices
    assert "team-a" in {m.id for m in a.models.list().data}
    assert "team-a" not in {m.id for m in b.models.list().data}
    absent = _not_found(lambda: b.chat.completions.create(model="no-such-alias", **chat))
    assert _not_found(lambda: b.chat.completions.create(model="team-a", **chat)) == \
        absent.replace("no-such-alias", "team-a")
    _not_found(lambda: b.models.retrieve("team-a"))
    assert projects.http.get("/v1/aliases/team-a", headers=_as("b")).status_code == 404
    assert projects.http.get("/v1/adapters/team-a", headers=_as("b")).status_code == 404
    listed = {who: [x["name"] for x in projects.http.get(
        "/v1/aliases", headers=_as(who)).json()["data"]] for who in ("a", "b", "admin")}
    assert listed == {"a": ["team-a"], "b": [], "admin": ["team-a"]}
    # Even pointed at a shared adapter (by an admin), A's alias stays A's.
    registry.publish(model)
    assert admin.models.retrieve("team-a").id == "team-a"
    assert projects.http.get("/v1/aliases/team-a", headers=_as("b")).status_code == 404
    _not_found(lambda: b.chat.completions.create(model="team-a", **chat))


def test_a_jobs_promotion_may_only_move_its_own_projects_aliases(projects):
    from types import SimpleNamespace

    from service.jobs.verdict import JobEvaluator
    from service.tenancy import job_alias_scope

    a, b = projects.as_("a"), projects.as_("b")
    state = projects.http.app.state
    registry = state.registry
    jobs = {who: _succeeded(sdk, sdk.fine_tuning.jobs.create(
        model="tiny", training_file=_upload(sdk)).id) for who, sdk in (("a", a), ("b", b))}
    registry.promote("team-a", jobs["a"].fine_tuned_model, actor="job:a", reason="ok",
                     project="a")
    registry.promote("shared", jobs["a"].fine_tuned_model, actor="admin", reason="admin's")
    evaluator = JobEvaluator(state.jobs_store, state.files_service, None, server_url="",
                             api_key=lambda project: None, reports_root=lambda: Path("."),
                             alias_scope=lambda p: job_alias_scope(state.settings, p))
    passed = SimpleNamespace(promote=True, summary=lambda: "beats the base")
    summary = {"report": {"html": "/reports/x/report.html"}, "decision": {}}

    def promote(job, alias: str) -> bool:
        return evaluator._promote(registry, state.jobs_store.get_job(job.id), alias, passed,
                                  summary, "file-result")

    b_model = jobs["b"].fine_tuned_model
    for alias, whose in (("team-a", "belongs to another project"),
                         ("shared", "is shared")):
        assert promote(jobs["b"], alias) is False
        assert registry.aliases.target(alias) == jobs["a"].fine_tuned_model  # unmoved
        refused = registry.aliases.decisions(alias)[0]
        assert (refused.action, refused.adapter, refused.actor) == ("refused", b_model,
                                                                    f"job:{jobs['b'].id}")
        assert whose in refused.reason and "project 'b'" in refused.reason
    assert registry.get(b_model).shared is False  # the refused adapter stays private
    events = [e.message for e in b.fine_tuning.jobs.list_events(jobs["b"].id).data]
    assert any(m.startswith("Not promoted to alias team-a: alias 'team-a' belongs to")
               for m in events)
    # B's own alias (new, then moved again by B's job) is B's; the adapter stays private.
    assert promote(jobs["b"], "team-b") is True
    assert (registry.aliases.owner("team-b"), registry.get(b_model).shared) == ("b", False)
    assert promote(jobs["b"], "team-b") is True
    # Where jobs are an admin decision (TUNESERVE_JOB_CREATORS=admin) they move any alias.
    state.settings.job_creators = "admin"
    try:
        assert promote(jobs["b"], "team-a") is True
    finally:
        state.settings.job_creators = "user"
    assert registry.aliases.target("team-a") == b_model
    assert registry.aliases.owner("team-a") == "a"  # still A's, now serving a shared adapter
    assert registry.get(b_model).shared is True


async def test_alias_owners_survive_a_restart_and_old_aliases_stay_shared(tmp_path,
                                                                          tiny_model_dir,
                                                                          tiny_adapter):
    db_path = tmp_path / "registry.sqlite"
    with sqlite3.connect(db_path) as db:  # an alias table from before alias owners
        db.execute("CREATE TABLE aliases (name TEXT PRIMARY KEY, adapter TEXT NOT NULL, "
                   "updated INTEGER NOT NULL)")
        db.execute("INSERT INTO aliases VALUES ('old', 'mine', 1)")
    engine = FakeEngine(model_path=tiny_model_dir, tokenizer=None)
    base = BaseModelShape.from_checkpoint("tiny", tiny_model_dir)
    registry = AdapterRegistry(db_path, engine, base, max_lora_rank=16)
    try:
        await registry.add("mine", tiny_adapter, project="a", shared=False)
        assert registry.aliases.owner("old") is None  # shared, as every alias was
        registry.promote("team-a", "mine", actor="job:x", reason="ok", project="a")
        registry.promote("team-a", "mine", actor="admin", reason="again")  # keeps its owner
    finally:
        registry.close()
    registry = AdapterRegistry(db_path, engine, base, max_lora_rank=16)
    try:
        assert (registry.aliases.owner("team-a"), registry.aliases.owner("old")) == ("a", None)
    finally:
        registry.close()


def test_alias_ownership_rule():
    from types import SimpleNamespace

    from service.tenancy import alias_refusal, job_alias_scope

    assert alias_refusal("x", exists=False, owner=None, scope="b") is None  # new: B's own
    assert alias_refusal("x", exists=True, owner="b", scope="b") is None
    assert "another project" in alias_refusal("x", exists=True, owner="a", scope="b")
    assert "shared" in alias_refusal("x", exists=True, owner=None, scope="b")
    assert alias_refusal("x", exists=True, owner="a", scope=None) is None  # admin: any
    keys = SimpleNamespace(auth_enabled=True, job_creators="user")
    assert job_alias_scope(keys, "b") == "b"
    assert job_alias_scope(SimpleNamespace(auth_enabled=True, job_creators="admin"), "b") is None
    assert job_alias_scope(SimpleNamespace(auth_enabled=False, job_creators="user"), "b") is None
