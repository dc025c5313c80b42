"""``/reports`` router: listing, serving files, path safety, auth, error envelope."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.errors import register_error_handlers
from service.reports.api_router import router
from service.reports.serving import ReportsServing


@pytest.fixture
def reports(tmp_path):
    root = tmp_path / "reports"
    folder = root / "docker-commands-20260101T000000Z"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html><table id='summary'></table></html>")
    (folder / "report.json").write_text(json.dumps({
        "suite": "docker-commands", "started_at": "2026-01-01T00:00:00+00:00",
        "models": [{"label": "base", "model_id": "tiny"},
                   {"label": "docker", "model_id": "docker-lora"}],
        "regression": {"regressions": [{"description": "x"}]},
    }))
    (tmp_path / "secret.txt").write_text("do not serve")
    return root


def _client(root, auth: bool = False) -> TestClient:
    app = FastAPI()
    register_error_handlers(app)
    app.include_router(router)
    app.state.settings = SimpleNamespace(
        auth_enabled=auth, admin_api_keys=["admin-key"], user_api_keys=["user-key"],
        key_projects={},
    )
    app.state.reports_serving = ReportsServing(root)
    # The served models: the base and one shared adapter (the report names both).
    app.state.base_id = "tiny"
    shared = SimpleNamespace(visible_to=lambda scope: True)
    app.state.registry = SimpleNamespace(
        resolve=lambda name: shared if name == "docker-lora" else None,
        aliases=SimpleNamespace(target=lambda name: None, owner=lambda name: None))
    return TestClient(app)


def test_list_and_fetch(reports):
    client = _client(reports)
    listing = client.get("/reports").json()
    item = listing["data"][0]
    assert item["id"] == "docker-commands-20260101T000000Z"
    assert item["suite"] == "docker-commands" and item["models"] == ["base", "docker"]
    assert item["regressed"] is True and item["files"] == ["report.html", "report.json"]
    page = client.get(item["url"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "id='summary'" in page.text
    redirect = client.get(f"/reports/{item['id']}", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == item["url"]


@pytest.mark.parametrize(
    "path",
    [
        "/reports/docker-commands-20260101T000000Z/missing.html",
        "/reports/nope/report.html",
        "/reports/../secret.txt",
        "/reports/docker-commands-20260101T000000Z/..%2F..%2Fsecret.txt",
        "/reports/%2E%2E/secret.txt",
        "/reports/.hidden/report.html",
    ],
)
def test_paths_outside_reports_are_404_in_the_error_envelope(reports, path):
    response = _client(reports).get(path)
    assert response.status_code == 404
    assert "do not serve" not in response.text
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        assert "error" in body or "detail" in body


def test_symlink_out_of_the_folder_is_refused(reports, tmp_path):
    link = reports / "docker-commands-20260101T000000Z" / "leak.txt"
    link.symlink_to(tmp_path / "secret.txt")
    response = _client(reports).get("/reports/docker-commands-20260101T000000Z/leak.txt")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_auth_required_when_keys_are_configured(reports):
    client = _client(reports, auth=True)
    assert client.get("/reports").status_code == 401
    ok = client.get("/reports", headers={"Authorization": "Bearer user-key"})
    assert ok.status_code == 200 and ok.json()["data"]


def test_empty_root_lists_nothing(tmp_path):
    assert _client(tmp_path / "none").get("/reports").json() == {"object": "list", "data": []}
