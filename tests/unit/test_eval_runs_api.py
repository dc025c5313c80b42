"""``POST /v1/evaluations`` on the real app (fake engine, tests/unit/ui_service.py): a run
in a worker subprocess that calls the server with the caller's key, owned by the key's
project, its report in /reports; bad input as an OpenAI error object."""

from __future__ import annotations

import time

import httpx
import pytest

from service.reports.runs import MAX_ACTIVE_RUNS_PER_PROJECT
from tests.unit.ui_service import ADAPTER, ADMIN_KEY, BASE, OTHER_KEY, USER_KEY, running_service

RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("eval-runs-home")) as url:
        yield url


def _call(api: str, method: str, path: str, key: str | None = USER_KEY, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{api}{path}", headers=headers, timeout=30, **kw)


def _finished(api: str, run_id: str, key: str = USER_KEY) -> dict:
    """Poll the run (the API has no push) until it is no longer queued or running."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        run = _call(api, "GET", f"/v1/evaluations/{run_id}", key).json()
        if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_a_run_lands_in_the_reports_and_belongs_to_its_project(api):
    started = _call(api, "POST", "/v1/evaluations",
                    json={"suite": "docker-commands", "models": [BASE, ADAPTER], "limit": 2})
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["object"] == "evaluation.run" and run["id"].startswith("evalrun-")
    assert run["status"] in ("queued", "running") and run["project"] == "default"
    done = _finished(api, run["id"])
    assert done["status"] == "succeeded", done
    assert done["exit_code"] in (0, 1) and done["report_id"].startswith("docker-commands")
    reports = _call(api, "GET", "/reports").json()["data"]
    assert done["report_id"] in [r["id"] for r in reports]
    record = _call(api, "GET", f"/reports/{done['report_id']}/report.json").json()
    assert set(record["metrics"]) == {BASE, ADAPTER}
    # Another project's key: absent, as if it did not exist; the admin sees it.
    assert _call(api, "GET", f"/v1/evaluations/{run['id']}", OTHER_KEY).status_code == 404
    assert _call(api, "GET", "/v1/evaluations", OTHER_KEY).json()["data"] == []
    assert _call(api, "GET", f"/v1/evaluations/{run['id']}", ADMIN_KEY).status_code == 200


def test_an_unknown_model_is_404_before_any_run_starts(api):
    # The same lookup as /v1/models with the caller's scope: another project's private
    # adapter is answered exactly like this (service.tenancy).
    refused = _call(api, "POST", "/v1/evaluations",
                    json={"suite": "docker-commands", "models": [BASE, "no-such-model"]})
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["param"] == "model" and "no-such-model" in refused.text
    assert all(r["models"] != [BASE, "no-such-model"]
               for r in _call(api, "GET", "/v1/evaluations").json()["data"])


def test_a_project_cannot_queue_an_unbounded_backlog(api):
    body = {"suite": "docker-commands", "models": [BASE, ADAPTER], "limit": 1}
    started = [_call(api, "POST", "/v1/evaluations", OTHER_KEY, json=body)
               for _ in range(MAX_ACTIVE_RUNS_PER_PROJECT)]
    assert [r.status_code for r in started] == [202] * MAX_ACTIVE_RUNS_PER_PROJECT
    refused = _call(api, "POST", "/v1/evaluations", OTHER_KEY, json=body)
    assert refused.status_code == 429, refused.text
    assert "already has" in refused.json()["error"]["message"]
    for run in started:  # the cap is per project and frees up as runs end
        done = _finished(api, run.json()["id"], OTHER_KEY)
        assert done["status"] == "succeeded", done["error"]
    assert _call(api, "POST", "/v1/evaluations", OTHER_KEY, json=body).status_code == 202


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"suite": "/etc/passwd", "models": [BASE, ADAPTER]}, "suite", "unknown suite"),
        ({"suite": "docker-commands", "models": []}, "models", "at least 2"),
        ({"suite": "docker-commands", "models": [BASE]}, "models", "at least 2"),
        ({"suite": "docker-commands", "models": [BASE, BASE]}, "models", "repeat"),
        ({"suite": "docker-commands", "models": [BASE, "a,b"]}, "models", "model id"),
        ({"suite": "docker-commands", "models": [BASE, ADAPTER], "limit": 0}, "limit",
         "greater"),
        ({"suite": "docker-commands", "models": [BASE, ADAPTER], "judge": True}, "judge",
         "unknown"),
    ],
)
def test_bad_input_is_an_openai_error_object(api, body, param, text):
    response = _call(api, "POST", "/v1/evaluations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and text in error["message"]
    assert param in (error.get("param") or error["message"])


def test_needs_a_key_and_unknown_runs_are_404(api):
    refused = _call(api, "POST", "/v1/evaluations", None,
                    json={"suite": "docker-commands", "models": [BASE, ADAPTER]})
    assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
    missing = _call(api, "GET", "/v1/evaluations/evalrun-nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "run_id"
