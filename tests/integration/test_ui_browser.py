"""The UI in a real browser against the real service (Gemma 3 270M on vLLM), at ``/ui``.

Headless Debian Chromium driven by Playwright's sync API (no downloaded browsers):
nothing works before a login with an API key; compare the base and an adapter side by
side, and see server refusals (unknown adapter, a user key's adapter change, rejected
folder) as readable messages in the page.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # running as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADAPTER = "ui-test-adapter"
# Real generation on 2 CPU cores: allow for a busy machine.
ANSWER_TIMEOUT_MS = 120_000
# A 5-step smoke job on the real base, queued behind any other job of the session.
JOB_TIMEOUT_MS = 480_000
# Page load and the /v1/models refresh; generous because a fine-tuning job of another test
# may hold both cores meanwhile (CI once needed more than 30 s here).
CONNECT_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian chromium is missing: run scripts/install-system-deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served_adapter(live_server, gemma_test_adapter) -> Iterator[str]:
    live_server.register_adapter(gemma_test_adapter, ADAPTER)
    yield ADAPTER
    live_server.unregister_adapter(ADAPTER)


def _login(page, key: str) -> None:
    """Log in on the page with ``key``, as a person would type it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    # On a loaded machine a first click once sent its request without the typed key (the
    # server logged a 401 and nothing after; seen once in CI, not reproduced alone): a
    # person types and clicks again, and so does this helper, within the same budget.
    for attempt in range(3):
        key_box = page.locator("#api-key input")
        key_box.fill(key)
        key_box.press("Tab")  # commit the typed value before the click reads it
        page.locator("#login-button").click()
        try:
            _wait_text(page, "#connection-status", r"Connected: base", CONNECT_TIMEOUT_MS // 3)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
    page.locator("#logout").wait_for(state="visible", timeout=CONNECT_TIMEOUT_MS)


def _logout(page) -> None:
    page.locator("#logout").click()
    page.locator("#api-key input").wait_for(state="visible", timeout=CONNECT_TIMEOUT_MS)


def _open_ui(browser, live_server):
    """A fresh page on the mounted UI, loaded (the login box is there)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(f"{live_server.base_url}/ui/")
    page.locator("#api-key input").wait_for(state="visible", timeout=CONNECT_TIMEOUT_MS)
    return page


@pytest.fixture
def page(browser, live_server, served_adapter):
    """The mounted UI, logged in with the user key."""
    page = _open_ui(browser, live_server)
    _login(page, live_server.user_key)
    yield page
    page.close()


API_REQUEST = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE) /(?:v1|reports)[/ ?]')


def _api_requests_since(live_server, offset: int) -> list[str]:
    """The API requests in the server's access log after byte ``offset``."""
    with open(live_server.log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if API_REQUEST.search(line)]


def test_without_login_no_tab_and_no_api_call(browser, live_server):
    """Before a login the page shows only the key box: no tab, no server field, and none of
    the UI's handlers (called through Gradio's queue API, as a script could) reaches the API
    (the server's access log); the login is then the first API call."""
    from tests.unit.ui_service import call_ui_handlers

    offset = live_server.log_path.stat().st_size
    page = _open_ui(browser, live_server)
    try:
        assert page.get_by_role("tab", name="Compare").count() == 0
        assert not page.locator("#model-0").is_visible()
        assert page.locator("#server-url").count() == 0
        assert "Server URL" not in page.locator("body").inner_text()
        page.locator("#login-button").click()  # an empty key: refused in the page
        _wait_text(page, "#connection-status", r"Enter your API key")
        done = call_ui_handlers(f"{live_server.base_url}/ui")
        assert len(done) > 20
        assert _api_requests_since(live_server, offset) == []
        assert any("Not logged in" in json.dumps(m.get("output")) for m in done.values())
        _login(page, live_server.user_key)
        assert page.get_by_role("tab", name="Compare").count() == 1
        assert any("/v1/models" in line for line in _api_requests_since(live_server, offset))
        assert live_server.user_key not in page.content()  # never rendered back
    finally:
        page.close()


def _wait_text(page, selector: str, pattern: str, timeout: int = 30_000) -> str:
    """Wait until the element's text matches ``pattern``; return the text."""
    page.wait_for_function(
        "([sel, pat]) => { const el = document.querySelector(sel);"
        " return el && new RegExp(pat).test(el.innerText); }",
        arg=[selector, pattern],
        timeout=timeout,
    )
    return page.locator(selector).inner_text()


def _pick(page, slot: int, model: str) -> None:
    """Choose ``model`` in a Compare column's dropdown, from its option list."""
    box = page.locator(f"#model-{slot} input")
    box.click()
    box.fill(model)
    option = page.get_by_role("option", name=model, exact=True)
    if option.count():
        option.first.click()
    else:  # a name the server does not list: typed in as a custom value
        box.press("Enter")
    page.keyboard.press("Escape")


def _answer(page, slot: int) -> str:
    """The last assistant message in a Compare column."""
    bot = page.locator(f"#answer-{slot} .message.bot, #answer-{slot} [data-testid='bot']")
    return bot.last.inner_text().strip()


def test_compare_base_and_adapter_side_by_side(page, live_server, served_adapter, test_output):
    assert page.locator("#model-0 input").input_value() == live_server.model_id
    _pick(page, 1, served_adapter)
    page.locator("#prompt textarea").fill("Write a docker command that lists all containers.")
    page.locator("#send").click()
    stats = [
        _wait_text(page, f"#stats-{slot}", r"TTFT .* tokens/s", ANSWER_TIMEOUT_MS)
        for slot in (0, 1)
    ]
    base, tuned = _answer(page, 0), _answer(page, 1)
    page.screenshot(path=str(test_output / "ui-compare.png"), full_page=True)
    assert base and tuned and base != "…" and tuned != "…"
    assert base != tuned, "the adapter's answer should differ from the base's"
    for line in stats:
        assert re.search(r"TTFT \d+\.\d\d s · \d+\.\d tokens/s · \d+ tokens", line), line
    assert "Done." in page.locator("#compare-status").inner_text()
    # The snippet reproduces the call for both models.
    page.get_by_text("Copy as curl / openai").click()
    snippet = _wait_text(page, "#snippet", served_adapter)
    assert "/v1/chat/completions" in snippet and live_server.model_id in snippet


def test_server_refusals_are_readable_in_the_page(page, live_server, served_adapter, test_output):
    # Unknown adapter: the server's 404 shows under that column, the other column answers.
    _pick(page, 1, "no-such-adapter")
    page.locator("#prompt textarea").fill("hello")
    page.locator("#send").click()
    refused = _wait_text(page, "#stats-1", r"HTTP 404", ANSWER_TIMEOUT_MS)
    assert "no-such-adapter" in refused and "does not exist" in refused
    _wait_text(page, "#stats-0", r"TTFT", ANSWER_TIMEOUT_MS)

    # Adapter changes without the admin key: refused with a hint, nothing unloaded.
    page.get_by_role("tab", name="Adapters").click()
    page.locator("#adapters-refresh").click()
    _wait_text(page, "#adapter-table", served_adapter)
    _wait_text(page, "#adapter-status", r"adapter\(s\) registered")
    unload_box = page.locator("#unload-name input")
    unload_box.click()
    page.get_by_role("option", name=served_adapter, exact=True).first.click()
    page.locator("#unload").click()
    no_admin = _wait_text(page, "#adapter-status", r"HTTP 40[13]")
    assert "admin key" in no_admin
    with live_server.http() as client:
        names = [a["name"] for a in client.get("/v1/adapters").json()["data"]]
    assert served_adapter in names

    # Logged in with the admin key, a folder that is not an adapter is rejected with the
    # reason.
    _logout(page)
    _login(page, live_server.admin_key)
    page.get_by_role("tab", name="Adapters").click()
    page.locator("#register-name textarea").fill("not-an-adapter")
    page.locator("#register-path textarea").fill("/nonexistent/folder")
    page.locator("#register").click()
    rejected = _wait_text(page, "#adapter-status", r"HTTP 4\d\d.*nonexistent/folder")
    assert "/nonexistent/folder" in rejected and "does not exist" in rejected
    page.screenshot(path=str(test_output / "ui-errors.png"), full_page=True)

    body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body
    assert httpx.get(f"{live_server.base_url}/health", timeout=5).status_code == 200


def test_train_tab_validates_upload_and_trains_into_compare(
    page, live_server, shared_data, tmp_path, test_output
):
    page.get_by_role("tab", name="Train").click()
    # A bad file: the server's line-numbered report shows in the page.
    bad = tmp_path / "bad.jsonl"
    good_row = {
        "messages": [
            {"role": "user", "content": "list containers"},
            {"role": "assistant", "content": "docker ps"},
        ]
    }
    bad.write_text(
        json.dumps(good_row)
        + "\nnot json at all\n"
        + json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
        + "\n"
    )
    page.locator("#dataset input[type=file]").set_input_files(str(bad))
    report = _wait_text(page, "#dataset-report", r"Rejected")
    assert re.search(r"line 2\b", report) and re.search(r"line 3\b", report), report
    page.locator("#dataset button[aria-label='Clear']").first.click()

    # A good slice of the docker data (alpaca JSON, as shipped) trains a smoke adapter.
    rows = json.loads((shared_data / "dockerNLcommands.json").read_text())[:40]
    good = tmp_path / "docker-40.json"
    good.write_text(json.dumps(rows))
    page.locator("#dataset input[type=file]").set_input_files(str(good))
    _wait_text(page, "#dataset-report", r"Accepted as")
    assert page.locator("#train-base input").input_value() == live_server.model_id
    page.locator("#suffix textarea").fill("ui")
    page.locator("#launch").click()
    progress = _wait_text(page, "#job-progress", r"succeeded|failed|cancelled", JOB_TIMEOUT_MS)
    page.screenshot(path=str(test_output / "ui-train.png"), full_page=True)
    assert "succeeded" in progress, progress
    model = re.search(r"Served as (ft:\S+?):? pick", progress.replace("\n", " "))
    assert model and model.group(1).startswith(f"ft:{live_server.model_id}:ui:"), progress
    assert re.search(r"step (\d+)/\1 \(100%\) · loss \d+\.\d{4}", progress), progress
    assert page.locator("#loss-plot canvas, #loss-plot svg").count() > 0
    # The server then judges the adapter on its 4 held-out rows; the verdict, its CI and the
    # report link replace the progress without a reload.
    verdict = _wait_text(page, "#job-progress", r"Verdict: (beats|does not beat) the base",
                         JOB_TIMEOUT_MS)
    assert re.search(r"on 4 held-out rows \(exact_match: base \d\.\d\d → adapter \d\.\d\d, "
                     r"Δ [+-]\d\.\d\d, 95% CI [+-]\d\.\d\d to [+-]\d\.\d\d\)", verdict), verdict
    link = page.locator("#job-progress a", has_text="Evaluation report")
    report = httpx.get(link.get_attribute("href"), timeout=10,
                       headers={"Authorization": f"Bearer {live_server.user_key}"})
    assert report.status_code == 200 and "held-out" in verdict
    page.screenshot(path=str(test_output / "ui-train-verdict.png"), full_page=True)

    # The finished adapter is offered in Compare without a manual refresh.
    page.get_by_role("tab", name="Compare").click()
    box = page.locator("#model-1 input")
    box.click()
    page.get_by_role("option", name=model.group(1), exact=True).wait_for(timeout=30_000)
    page.keyboard.press("Escape")


def test_evaluate_tab_runs_a_suite_against_the_server(live_server, served_adapter):
    """The Evaluate tab's run (a few held-out rows) is started through the real server's
    POST /v1/evaluations and ends with the report in the page and the run in the history
    plot, the report stored by the server."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from ui.evaluate import run_evaluation

    async def run() -> list:
        models = [live_server.model_id, served_adapter]
        agen = run_evaluation(
            live_server.base_url, live_server.user_key, "docker-commands", models, 4
        )
        return [item async for item in agen]

    # Playwright's sync API keeps an event loop running in this thread: run on another.
    with ThreadPoolExecutor(1) as pool:
        updates = pool.submit(asyncio.run, run()).result()
    status, report, html, history = updates[-1]
    assert status.startswith("✅ Finished"), status
    assert any(str(u[0]).startswith("⏳ Running") for u in updates[:-1])
    assert "docker-commands" in report and served_adapter in report
    assert html.endswith(".html") and "<html" in open(html).read().lower()
    assert set(history["model"]) >= {live_server.model_id, served_adapter}
    with live_server.http() as client:
        reports = client.get("/reports").json()["data"]
    assert any(r["suite"] == "docker-commands" and served_adapter in r["models"]
               for r in reports)
