"""The UI's handlers against the real service app (fake engine) over real HTTP: what each
tab shows, errors included (tests/unit/ui_service.py)."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from pathlib import Path

import gradio as gr
import pytest

from tests.unit.service_lora import make_lora_adapter
from tests.unit.ui_service import ADAPTER, ADMIN_KEY, BASE, USER_KEY, running_service
from tuneserve.cli import main
from ui import adapters, app, compare, train
from ui.adapters import adapter_table
from ui.compare import MAX_SLOTS
from ui.train import PRESETS, evaluation_running, job_request, loss_frame, progress_text

SKIP = gr.skip()


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    with running_service(tiny_model_dir, tmp_path_factory.mktemp("ui-home")) as url:
        yield url


async def _collect(agen):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [item async for item in agen]
    return items, [str(w.message) for w in caught]


def test_build_ui_has_the_four_tabs():
    demo = app.build_ui("http://127.0.0.1:1")
    labels = {b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert labels == {"Compare", "Adapters", "Evaluate", "Train"}


def test_server_url_and_key_are_not_in_the_page():
    """Neither the fixed server URL nor a preset key is a component value the page gets,
    and there is no field to change the server."""
    demo = app.build_ui("http://10.9.8.7:1234", "preset-key-0123456789")
    config = json.dumps(demo.get_config_file(), default=str)
    assert "10.9.8.7" not in config and "preset-key-0123456789" not in config
    assert "Server URL" not in config and "server-url" not in config


class _Request:  # login() only reads the socket when no URL is fixed
    request = None


async def test_login_checks_the_key_and_never_returns_it(api):
    with pytest.warns(UserWarning):
        out = await app.login(api, "wrong-key-0123456789", _Request())
    server, key, box, login_box, main = out[:5]
    assert key is None and box == "" and main["visible"] is False and login_box["visible"]
    assert "HTTP 401" in out[-1]
    out = await app.login(api, f" {USER_KEY} ", _Request())
    server, key, box, login_box, main = out[:5]
    assert (server, key, box) == (api, USER_KEY, "")
    assert main["visible"] is True and login_box["visible"] is False
    assert out[5]["choices"] == [BASE, ADAPTER] and out[-1].startswith("Connected")
    assert USER_KEY not in json.dumps([str(o) for o in out[2:]])
    assert app.logout()[0] is None


async def test_no_handler_calls_the_server_before_login(tmp_path: Path):
    """Every tab's handlers refuse without a login, before any request: pointed at a port
    nobody listens on, they say "Not logged in", never "Cannot reach"."""
    dead = "http://127.0.0.1:9"
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = [
            (await app.refresh_models(dead, None))[-1],
            (await adapters.load_adapters(dead, None))[-1],
            await adapters.register_adapter(dead, None, "n", "/p"),
            await adapters.upload_adapter(dead, None, "n", str(archive)),
            await adapters.unload_adapter(dead, None, "n"),
            (await train.upload_dataset(dead, None, str(archive)))[0],
            (await train.launch_job(dead, None, BASE, "file-1", next(iter(PRESETS)), "s", 1))[-1],
            (await train.poll_job(dead, None, "job-1"))[-1],
            await train.cancel_job(dead, None, "job-1"),
            (await train.list_jobs(dead, None))[-1],
        ]
        items, _ = await _collect(compare.send_prompt(dead, None, "", "hi", 0, 1, 8, None,
                                                      BASE, "", "", "", *([[]] * MAX_SLOTS)))
        outputs.append(items[-1][-1])
    for text in outputs:
        assert "Not logged in" in text and "Cannot reach" not in text, text


async def test_refresh_models_fills_pickers(api):
    out = await app.refresh_models(api, USER_KEY)
    assert out[0]["choices"] == [BASE, ADAPTER]
    assert out[1]["choices"] == [("(none)", ""), BASE, ADAPTER]  # columns can be switched off
    assert out[0]["value"] == BASE
    assert out[-2]["value"] == [BASE, ADAPTER]  # Evaluate: base vs the newest adapter
    assert "1 adapter(s)" in out[-1]
    with pytest.warns(UserWarning):
        refused = await app.refresh_models(api, "wrong-key")
    assert "HTTP 401" in refused[-1] and "invalid API key" in refused[-1]


async def test_refresh_models_unreachable_is_readable():
    with pytest.warns(UserWarning):
        out = await app.refresh_models("http://127.0.0.1:9", "")
    assert out[-1].startswith("⚠️ Cannot reach the server")


async def test_send_prompt_streams_and_reports_unknown_adapter(api):
    slots = [BASE, ADAPTER, "no-such-adapter", "", *([[]] * MAX_SLOTS)]
    items, warned = await _collect(
        compare.send_prompt(api, USER_KEY, "", "hello", 0.0, 1.0, 32, None, *slots)
    )
    chats, stats, status = items[-1][:MAX_SLOTS], items[-1][MAX_SLOTS:-1], items[-1][-1]
    # The fake engine answers "docker ps", naming the adapter a request was routed to.
    assert chats[0][-1]["content"].strip() == "docker ps"
    assert chats[1][-1]["content"].strip() == f"docker ps ({ADAPTER})"
    assert chats[0][0] == {"role": "user", "content": "hello"}
    assert "TTFT" in stats[0] and "tokens/s" in stats[1]
    assert "no-such-adapter" in stats[2] and "does not exist" in stats[2]
    assert "HTTP 404" in status and "Traceback" not in status
    assert any("no-such-adapter" in w for w in warned)


async def test_send_prompt_keeps_history(api):
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    slots = [BASE, "", "", "", history, [], [], []]
    items, _ = await _collect(compare.send_prompt(api, USER_KEY, "sys", "c", 0.0, 1.0, 8, 1, *slots))
    assert [m["content"] for m in items[-1][0]][:3] == ["a", "b", "c"]


async def test_send_prompt_requires_prompt_and_model(api):
    items, warned = await _collect(compare.send_prompt(api, "", "", " ", 0, 1, 8, None, *[""] * 8))
    assert items[-1][-1] == "Type a prompt first." and warned
    items, _ = await _collect(compare.send_prompt(api, "", "", "x", 0, 1, 8, None, *[""] * 8))
    assert items[-1][-1] == "Pick at least one model."


def test_render_snippet_for_selected_models(api):
    update = compare.render_snippet(
        api, "", "q", "openai", 0.0, 1.0, 8, None, BASE, "docker", "", "", *([[]] * MAX_SLOTS)
    )
    assert update["language"] == "python" and update["value"].count("OpenAI(") == 2


async def test_adapters_table_and_admin_refusals(api, tiny_model_dir, tmp_path: Path):
    table, names, status = await adapters.load_adapters(api, USER_KEY)
    assert ADAPTER in list(table["name"]) and "adapter(s) registered" in status
    with pytest.warns(UserWarning):
        refused = await adapters.unload_adapter(api, "", ADAPTER)
    assert "HTTP 401" in refused and "admin key" in refused
    with pytest.warns(UserWarning):
        refused = await adapters.unload_adapter(api, USER_KEY, ADAPTER)
    assert "HTTP 403" in refused and "needs the admin key" in refused
    with pytest.warns(UserWarning):
        refused = await adapters.register_adapter(api, ADMIN_KEY, "new", str(tmp_path / "none"))
    assert "adapter_not_found" in refused and "does not exist" in refused
    folder = make_lora_adapter(tiny_model_dir, tmp_path / "new-adapter", seed=1)
    assert (await adapters.register_adapter(api, ADMIN_KEY, "new", str(folder))).startswith("✅")
    table, _, _ = await adapters.load_adapters(api, USER_KEY)
    assert "new" in list(table["name"])
    assert (await adapters.unload_adapter(api, ADMIN_KEY, "new")).startswith("✅")
    with pytest.warns(UserWarning):
        missing = await adapters.unload_adapter(api, ADMIN_KEY, "new")
    assert "HTTP 404" in missing and "no adapter named 'new'" in missing


async def test_dataset_upload_shows_line_numbered_report(api, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n{"x": 1}\n')
    with pytest.warns(UserWarning):
        report, file_id = await train.upload_dataset(api, USER_KEY, str(bad))
    assert file_id is None and "Rejected" in report
    assert "line 2: invalid JSON" in report and "line 3: missing key 'messages'" in report
    report, file_id = await train.upload_dataset(api, USER_KEY, str(_chat_rows(tmp_path)))
    assert file_id.startswith("file-") and f"Accepted as `{file_id}`" in report


def _chat_rows(tmp_path: Path) -> Path:
    path = tmp_path / "good.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"list containers {i}"},
                      {"role": "assistant", "content": "docker ps"}]}
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_job_launch_and_live_loss_until_succeeded(api, tmp_path: Path):
    """A smoke job (real `tuneserve train` on the tiny base) from the Train tab's handlers:
    the live loss while it runs, then its served model."""
    _, file_id = await train.upload_dataset(api, USER_KEY, str(_chat_rows(tmp_path)))
    smoke = next(name for name in PRESETS if name.startswith("smoke"))
    job_id, progress, timer, status = await train.launch_job(
        api, USER_KEY, BASE, file_id, smoke, "x", 1
    )
    assert job_id.startswith("ftjob-") and "created" in status
    assert timer.active is True
    deadline = time.monotonic() + 240
    while True:  # the page's timer tick, until the job ends
        plot, progress, timer, status = await train.poll_job(api, USER_KEY, job_id)
        if isinstance(timer, gr.Timer) and timer.active is False:
            break
        assert time.monotonic() < deadline, progress
        await asyncio.sleep(0.5)
    assert "succeeded" in progress, progress
    assert list(plot[plot.series == "train"].step) == [1, 2, 3, 4, 5]
    model = f"ft:{BASE}:x:{job_id}"
    assert model in progress and train._finished_marker(progress) == progress
    out = await app.refresh_models(api, USER_KEY)
    assert model in out[0]["choices"]
    jobs, status = await train.list_jobs(api, USER_KEY)
    assert job_id in list(jobs["id"]) and "job(s)" in status


async def test_job_on_missing_endpoint_says_not_available(api):
    with pytest.warns(UserWarning):
        status = await train.cancel_job(api + "/elsewhere", USER_KEY, "ftjob-1")
    assert status == (
        "⚠️ POST /elsewhere/v1/fine_tuning/jobs/ftjob-1/cancel is not available on this server."
    )


def test_job_request_puts_lora_settings_in_method():
    body = job_request(
        model="m",
        training_file="f",
        preset="qlora (3 epochs, 4-bit base, r=16)",
        suffix=" s ",
        seed=3,
    )
    hp = body["method"]["supervised"]["hyperparameters"]
    assert hp["qlora"] is True and hp["n_epochs"] == 3 and body["suffix"] == "s"
    with pytest.raises(ValueError, match="unknown preset"):
        job_request(model="m", training_file="f", preset="nope")


def test_loss_frame_and_progress_text():
    events = [
        {"message": "started"},
        {"data": {"step": 1, "total_steps": 4, "train_loss": 2.0}},
        {"data": {"step": 2, "total_steps": 4, "train_loss": 1.5, "valid_loss": 1.7}},
    ]
    frame = loss_frame(events)
    assert frame.to_dict("records") == [
        {"step": 1, "loss": 2.0, "series": "train"},
        {"step": 2, "loss": 1.5, "series": "train"},
        {"step": 2, "loss": 1.7, "series": "validation"},
    ]
    text = progress_text({"id": "j", "status": "failed", "error": {"message": "OOM"}}, events)
    assert "step 2/4 (50%)" in text and "loss 1.5000" in text and "❌ OOM" in text


def test_progress_text_shows_the_verdict_and_keeps_polling_until_it_comes():
    job = {"id": "j", "status": "succeeded", "fine_tuned_model": "ft:m:x:j",
           "evaluation": {"status": "running", "rows": 12}}
    assert evaluation_running(job)
    assert "Evaluating against the base on 12 held-out rows" in progress_text(job, [])
    job["evaluation"] = {
        "status": "done", "rows": 12, "verdict": "beats the base", "promoted": True,
        "alias": "docker", "report": {"html": "/reports/job-j-1/report.html"},
        "decision": {"metric": "exact_match", "beats_base": True,
                     "vs_base": {"delta": 0.75, "low": 0.5, "high": 1.0}},
        "figures": {"models": {"base": {"exact_match": 0.0},
                               "candidate": {"exact_match": 0.75}}},
    }
    assert not evaluation_running(job)
    text = progress_text(job, [], "http://srv:8000/")
    assert ("Verdict: beats the base** on 12 held-out rows (exact_match: base 0.00 → adapter "
            "0.75, Δ +0.75, 95% CI +0.50 to +1.00)") in text
    assert "**docker** now serves this adapter" in text
    assert "(http://srv:8000/reports/job-j-1/report.html)" in text
    job["evaluation"] = {"status": "skipped", "reason": "no held-out rows"}
    assert "Not evaluated: no held-out rows." in progress_text(job, [])


def test_adapter_table_reads_manifest_fields():
    record = {
        "name": "docker",
        "created_at": 0,
        "manifest": {
            "base_model": "gemma-3-270m",
            "config": {"lora_r": 16},
            "datasets": [{"path": "/d/dockerNLcommands.json", "rows": 2415}],
            "metrics": {"exact_match": 0.5},
        },
    }
    row = adapter_table([record]).iloc[0].to_dict()
    assert row["base"] == "gemma-3-270m" and row["rank"] == 16
    assert row["dataset"] == "dockerNLcommands.json (2415 rows)"
    assert row["eval score"] == "exact_match 0.500" and row["created"].startswith("1970-01-01")


def test_cli_ui_help_and_bad_url(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ui", "--help"])
    assert info.value.code == 0 and "--server" in capsys.readouterr().out
    assert main(["ui", "--server", "ftp://x"]) == 2
    assert "must be an http(s) URL" in capsys.readouterr().err


def test_eval_column_falls_back_to_the_newest_report_verdict():
    from ui.adapters import latest_verdicts

    reports = [
        {
            "suite": "docker-commands",
            "models": ["gemma", "docker"],
            "headline": ["HELPS: docker beats gemma on exact match"],
        },
        {
            "suite": "old",
            "models": ["gemma", "docker", "hotel"],
            "headline": ["HURTS: docker is worse", "NO CLEAR DIFFERENCE between hotel and gemma"],
        },
    ]
    verdicts = latest_verdicts(reports)
    assert verdicts == {
        "docker": "docker-commands: HELPS: docker beats gemma on exact match",
        "hotel": "old: NO CLEAR DIFFERENCE between hotel and gemma",
    }
    table = adapter_table([{"name": "docker"}, {"name": "x", "manifest": {}}], verdicts)
    assert list(table["eval score"]) == [verdicts["docker"], ""]


async def test_adapter_archive_upload(api, tiny_model_dir, tmp_path: Path):
    import shutil

    folder = make_lora_adapter(tiny_model_dir, tmp_path / "my-adapter", seed=2)
    archive = Path(shutil.make_archive(str(tmp_path / "my-adapter"), "zip", folder))
    assert (await adapters.upload_adapter(api, ADMIN_KEY, "", str(archive))).startswith("✅")
    table, _, _ = await adapters.load_adapters(api, USER_KEY)
    assert "my-adapter" in list(table["name"])
    assert (await adapters.unload_adapter(api, ADMIN_KEY, "my-adapter")).startswith("✅")
    with pytest.warns(UserWarning):
        refused = await adapters.upload_adapter(api, "", "x", str(archive))
    assert "HTTP 401" in refused
    wrong = tmp_path / "adapter.rar"
    wrong.write_bytes(b"x")
    with pytest.warns(UserWarning):
        refused = await adapters.upload_adapter(api, ADMIN_KEY, "y", str(wrong))
    assert "not a .zip or .tar(.gz) archive" in refused
    with pytest.warns(UserWarning):
        assert "Choose an adapter archive" in await adapters.upload_adapter(api, ADMIN_KEY, "", None)