"""The Evaluate tab against the real service app (fake engine): a run, its report listed and
opened over HTTP, run validation, history plot."""

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
    """The Evaluate tab's run: progress updates, then the report and the history plot;
    the report is then on the server (the UI and the server share $TUNESERVE_HOME, as
    when mounted at /ui). The real-vLLM version is in tests/integration/test_ui_browser.py."""
    import os
    from pathlib import Path

    items, _ = await _collect(ev.run_evaluation(api, USER_KEY, "docker-commands",
                                                [BASE, ADAPTER], 3))
    status, report, html, history = items[-1]
    assert status.startswith("✅ Finished"), status
    assert items[0][0].startswith("⏳ Running **docker-commands**")
    assert "docker-commands" in report and ADAPTER in report
    home = Path(os.environ["TUNESERVE_HOME"])
    assert html.endswith("report.html") and (home / "reports").is_dir()
    assert set(history["model"]) == {BASE, ADAPTER}

    table, picker, status = await ev.list_reports(api, USER_KEY)
    assert list(table["suite"]) == ["docker-commands"] and "1 report(s)" in status
    text, status = await ev.open_report(api, USER_KEY, picker["value"])
    assert text.startswith("# ") and "docker-commands" in text and "report.html" in status
    with pytest.warns(UserWarning):
        _, status = await ev.open_report(api, USER_KEY, "gone")
    assert "HTTP 404" in status


async def test_reports_on_server_without_them_say_not_available(api):
    with pytest.warns(UserWarning):
        _, _, status = await ev.list_reports(api + "/nothing-here", USER_KEY)
    assert "not available on this server" in status


async def test_run_needs_suite_and_two_models():
    items, warned = await _collect(ev.run_evaluation("http://x", "", "docker-commands", [BASE], 5))
    assert items[-1][0].startswith("Pick at least two models") and warned
    items, _ = await _collect(ev.run_evaluation("http://x", "", None, [BASE, "a"], 5))
    assert items[-1][0] == "Pick a suite."


async def test_run_reports_unknown_suite_readably():
    items, warned = await _collect(
        ev.run_evaluation("http://x", "", "/no/such.yaml", ["a", "b"], 5)
    )
    assert items[-1][0].startswith("⚠️ unknown suite") and warned


async def test_run_against_unreachable_server_is_readable():
    items, _ = await _collect(
        ev.run_evaluation("http://127.0.0.1:9", "", "docker-commands", ["a", "b"], 2)
    )
    assert items[-1][0].startswith("⚠️") and "127.0.0.1:9" in items[-1][0]
    assert "Traceback" not in items[-1][0]


def test_history_frame_from_stored_runs(isolated_home):
    from evaluation.history import History

    history = History()
    for em in (0.1, 0.4):
        record = {
            "suite": "docker-commands",
            "started_at": "2026-01-01T00:00:00+00:00",
            "models": [],
            "metrics": {"base": {"exact_match": 0.05}, "docker": {"exact_match": em}},
        }
        history.add(record, None, False)
    frame = ev.history_frame("docker-commands", "exact_match")
    assert list(frame[frame.model == "docker"].value) == [0.1, 0.4]
    assert list(frame.run) == sorted(frame.run)
    assert ev.history_frame(None, "exact_match").empty
