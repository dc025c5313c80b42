"""The Evaluate tab against the real service app (fake engine): a run through the API, its
report listed and opened over HTTP, run validation, history plot."""

from __future__ import annotations

import warnings

import pytest

from tests.unit.ui_service import ADAPTER, BASE, USER_KEY, running_service
from ui import evaluate as ev


async def _collect(agen):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [item async for item in agen]
    return items, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("ui-home")) as url:
        yield url


async def test_run_then_its_report_is_listed_and_opened(api):
    """The Evaluate tab's run goes through POST /v1/evaluations (a worker subprocess of the
    server) and polling; then the report, its HTML page (fetched over HTTP) and the history
    plot. The real-vLLM version is in tests/integration/test_ui_browser.py."""
    import httpx

    items, _ = await _collect(ev.run_evaluation(api, USER_KEY, "docker-commands",
                                                [BASE, ADAPTER], 3))
    status, report, html, history = items[-1]
    assert status.startswith("✅ Finished"), status
    assert any(str(item[0]).startswith(("⏳ Queued", "⏳ Running")) for item in items[:-1])
    assert "docker-commands" in report and ADAPTER in report
    assert html.endswith(".html") and "<html" in open(html).read().lower()
    assert set(history["model"]) == {BASE, ADAPTER}
    # The run is the server's, owned by the key's project.
    runs = httpx.get(f"{api}/v1/evaluations", headers={"Authorization": f"Bearer {USER_KEY}"},
                     timeout=10).json()["data"]
    assert [(r["status"], r["project"]) for r in runs] == [("succeeded", "default")]

    table, picker, status = await ev.list_reports(api, USER_KEY)
    assert list(table["suite"]) == ["docker-commands"] and "1 report(s)" in status
    assert picker["value"] == runs[0]["report_id"]
    text, status = await ev.open_report(api, USER_KEY, picker["value"])
    assert text.startswith("# ") and "docker-commands" in text and "report.html" in status
    with pytest.warns(UserWarning):
        _, status = await ev.open_report(api, USER_KEY, "gone")
    assert "HTTP 404" in status
    frame = await ev.history_frame(api, USER_KEY, "docker-commands", "exact_match")
    assert set(frame["model"]) == {BASE, ADAPTER} and set(frame["run"]) == {picker["value"]}


async def test_reports_on_server_without_them_say_not_available(api):
    with pytest.warns(UserWarning):
        _, _, status = await ev.list_reports(api + "/nothing-here", USER_KEY)
    assert "not available on this server" in status


async def test_run_needs_suite_and_two_models():
    items, warned = await _collect(ev.run_evaluation("http://x", "", "docker-commands", [BASE], 5))
    assert items[-1][0].startswith("Pick at least two models") and warned
    items, _ = await _collect(ev.run_evaluation("http://x", "", None, [BASE, "a"], 5))
    assert items[-1][0] == "Pick a suite."


async def test_run_refused_by_the_server_is_readable(api):
    items, warned = await _collect(
        ev.run_evaluation(api, USER_KEY, "/no/such.yaml", [BASE, ADAPTER], 5)
    )
    assert "HTTP 400" in items[-1][0] and "unknown suite" in items[-1][0] and warned


async def test_run_without_login_or_server_is_readable():
    items, _ = await _collect(
        ev.run_evaluation("http://127.0.0.1:9", None, "docker-commands", ["a", "b"], 2)
    )
    assert "Not logged in" in items[-1][0]
    items, _ = await _collect(
        ev.run_evaluation("http://127.0.0.1:9", "", "docker-commands", ["a", "b"], 2)
    )
    assert items[-1][0].startswith("⚠️") and "127.0.0.1:9" in items[-1][0]
    assert "Traceback" not in items[-1][0]
