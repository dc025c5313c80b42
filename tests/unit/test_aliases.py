"""Aliases over HTTP against the app with a fake engine (fast): an alias is a model id that
serves its target adapter; promote, rollback and delete are admin calls, each recorded.
The real-engine end to end (a job promoted by the gate) is in
tests/integration/test_jobs_verdict.py."""

from __future__ import annotations

import pytest

from service.adapters.aliases import AliasTable
from service.adapters.catalog import AdapterCatalog, AdapterRecord
from service.errors import Conflict, NotFound
from tests.unit import test_service_api
from tests.unit.service_lora import make_lora_adapter
from tests.unit.test_service_api import ADMIN_KEY, USER_KEY, _assert_error

make_client = test_service_api.make_client  # the shared fixture: the app on a fake engine

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {USER_KEY}"}


def _catalog_with(url: str, names: tuple[str, ...]) -> AdapterCatalog:
    catalog = AdapterCatalog(url, "tiny")
    for name in names:
        catalog.insert(AdapterRecord(name=name, path=f"/nowhere/{name}", base_model="tiny",
                                     rank=8, alpha=8.0, target_modules=["q_proj"],
                                     source="api", created=1))
    return catalog


def test_rollback_is_a_stack_of_promotions(database_url):
    table = AliasTable(_catalog_with(database_url, ("a", "b", "c")).engine, "tiny")
    for adapter in ("a", "b", "c"):
        table.record("x", "promote", adapter=adapter, actor="t", reason="r")
    table.record("x", "refused", adapter="d", actor="t", reason="gate")
    assert table.target("x") == "c" and table.rollback_target("x") == "b"
    table.record("x", "rollback", adapter="b", actor="t", reason="r")
    assert table.rollback_target("x") == "a"
    table.record("x", "rollback", adapter="a", actor="t", reason="r")
    assert table.target("x") == "a" and table.rollback_target("x") is None
    assert [d.action for d in table.decisions("x")] == [
        "rollback", "rollback", "refused", "promote", "promote", "promote"]
    # Another base's aliases in the same database are its own.
    assert AliasTable(table._engine, "other").all() == {}


def test_a_promotion_needs_the_adapters_row_and_blocks_its_removal(database_url):
    catalog = _catalog_with(database_url, ("a",))
    table = AliasTable(catalog.engine, "tiny")
    with pytest.raises(NotFound):
        table.record("x", "promote", adapter="gone", actor="t", reason="r")
    table.record("x", "promote", adapter="a", actor="t", reason="r")
    with pytest.raises(Conflict, match="alias 'x'"):
        catalog.delete("a")
    table.record("x", "delete", adapter=None, actor="t", reason="r")
    assert catalog.delete("a").name == "a" and catalog.rows() == {}


@pytest.fixture
def served(make_client, tiny_model_dir, tmp_path):
    client = make_client(user_api_keys=USER_KEY, admin_api_keys=ADMIN_KEY)
    for i, name in enumerate(("first", "second")):
        path = make_lora_adapter(tiny_model_dir, tmp_path / name, seed=i)
        response = client.post("/v1/adapters", json={"name": name, "path": str(path)},
                               headers=ADMIN)
        assert response.status_code == 201, response.text
    return client


def _chat(client, model: str) -> str:
    response = client.post("/v1/chat/completions", headers=USER, json={
        "model": model, "messages": [{"role": "user", "content": "list containers"}]})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_alias_serves_its_target_and_moves_with_promotion_and_rollback(served):
    client = served
    _assert_error(client.post("/v1/aliases/docker/promote", json={"adapter": "first"},
                              headers=USER), 403)
    _assert_error(client.post("/v1/aliases/docker/promote", json={"adapter": "nope"},
                              headers=ADMIN), 404, "adapter_not_found")
    _assert_error(client.post("/v1/aliases/first/promote", json={"adapter": "second"},
                              headers=ADMIN), 400, "alias_is_adapter")

    ok = client.post("/v1/aliases/docker/promote", headers=ADMIN,
                     json={"adapter": "first", "reason": "first release"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["adapter"] == "first"
    assert _chat(client, "docker").endswith("(first)")  # the fake engine names the adapter
    models = {m["id"]: m for m in client.get("/v1/models", headers=USER).json()["data"]}
    assert models["docker"]["adapter"]["alias_for"] == "first"
    assert client.get("/v1/adapters/docker", headers=USER).json()["name"] == "first"

    client.post("/v1/aliases/docker/promote", json={"adapter": "second"}, headers=ADMIN)
    assert _chat(client, "docker").endswith("(second)")
    back = client.post("/v1/aliases/docker/rollback", headers=ADMIN)
    assert back.status_code == 200 and back.json()["adapter"] == "first"
    assert _chat(client, "docker").endswith("(first)")
    _assert_error(client.post("/v1/aliases/docker/rollback", headers=ADMIN), 409,
                  "nothing_to_roll_back")

    alias = client.get("/v1/aliases/docker", headers=USER).json()
    assert [(d["action"], d["adapter"], d["previous"]) for d in alias["decisions"]] == [
        ("rollback", "first", "second"), ("promote", "second", "first"),
        ("promote", "first", None)]
    assert all(d["actor"] == "admin" for d in alias["decisions"])
    assert alias["decisions"][-1]["reason"] == "first release"

    # The target cannot be deleted from under its alias; the alias can go first.
    _assert_error(client.delete("/v1/adapters/first", headers=ADMIN), 409, "adapter_in_use")
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'tuneserve_alias_target{adapter="first",alias="docker"} 1.0' in metrics
    assert 'tuneserve_requests_total{endpoint="chat",model="docker",status="200"}' in metrics
    assert client.delete("/v1/aliases/docker", headers=ADMIN).json()["action"] == "delete"
    _assert_error(client.post("/v1/chat/completions", headers=USER, json={
        "model": "docker", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert client.delete("/v1/adapters/first", headers=ADMIN).status_code == 200
    assert 'alias="docker"' not in client.get("/metrics", headers=ADMIN).text


def test_an_adapter_cannot_take_an_alias_name(served, tiny_model_dir, tmp_path):
    client = served
    client.post("/v1/aliases/docker/promote", json={"adapter": "first"}, headers=ADMIN)
    path = make_lora_adapter(tiny_model_dir, tmp_path / "third", seed=3)
    _assert_error(client.post("/v1/adapters", json={"name": "docker", "path": str(path)},
                              headers=ADMIN), 400, "adapter_exists")
