"""The UI's handlers against a fake API over real HTTP: what each tab shows, errors included."""

from __future__ import annotations

import warnings
from pathlib import Path

import gradio as gr
import pytest
from ui_fake_api import ADMIN_KEY, BASE, running_fake_api

from tuneserve.cli import main
from ui import adapters, app, compare, train
from ui.adapters import adapter_table
from ui.compare import MAX_SLOTS
from ui.train import PRESETS, evaluation_running, job_request, loss_frame, progress_text

SKIP = gr.skip()


@pytest.fixture(scope="module")
def api():
    with running_fake_api() as url:
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


async def test_refresh_models_fills_pickers(api):
    out = await app.refresh_models(api, "")
    assert out[0]["choices"] == [BASE, "docker"]
    assert out[1]["choices"] == [("(none)", ""), BASE, "docker"]  # columns can be switched off
    assert out[0]["value"] == BASE
    assert out[-2]["value"] == [BASE, "docker"]  # Evaluate: base vs the newest adapter
    assert "1 adapter(s)" in out[-1]


async def test_refresh_models_unreachable_is_readable():
    with pytest.warns(UserWarning):
        out = await app.refresh_models("http://127.0.0.1:9", "")
    assert out[-1].startswith("⚠️ Cannot reach the server")


async def test_send_prompt_streams_and_reports_unknown_adapter(api):
    slots = [BASE, "docker", "no-such-adapter", "", *([[]] * MAX_SLOTS)]
    items, warned = await _collect(
        compare.send_prompt(api, "", "", "hello", 0.0, 1.0, 32, None, *slots)
    )
    chats, stats, status = items[-1][:MAX_SLOTS], items[-1][MAX_SLOTS:-1], items[-1][-1]
    assert chats[0][-1]["content"].strip() == f"{BASE} answers: hello"
    assert chats[1][-1]["content"].strip() == "docker answers: hello"
    assert chats[0][0] == {"role": "user", "content": "hello"}
    assert "TTFT" in stats[0] and "tokens/s" in stats[1]
    assert "no-such-adapter" in stats[2] and "does not exist" in stats[2]
    assert "HTTP 404" in status and "Traceback" not in status
    assert any("no-such-adapter" in w for w in warned)


async def test_send_prompt_keeps_history(api):
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    slots = [BASE, "", "", "", history, [], [], []]
    items, _ = await _collect(compare.send_prompt(api, "", "sys", "c", 0.0, 1.0, 8, 1, *slots))
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


async def test_adapters_table_and_admin_refusals(api):
    table, names, status = await adapters.load_adapters(api, "")
    assert list(table["name"]) == ["docker"] and "1 adapter(s)" in status
    with pytest.warns(UserWarning):
        refused = await adapters.unload_adapter(api, "", "docker")
    assert "HTTP 401" in refused and "admin key" in refused
    with pytest.warns(UserWarning):
        refused = await adapters.register_adapter(api, ADMIN_KEY, "new", "/elsewhere")
    assert "adapter_rejected" in refused and "adapter_config.json" in refused
    assert (await adapters.register_adapter(api, ADMIN_KEY, "new", "/ok/new")).startswith("✅")
    assert (await adapters.unload_adapter(api, ADMIN_KEY, "new")).startswith("✅")
    with pytest.warns(UserWarning):
        missing = await adapters.unload_adapter(api, ADMIN_KEY, "new")
    assert "not registered" in missing


async def test_dataset_upload_shows_line_numbered_report(api, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n{"messages": []}\n{"x": 1}\n')
    with pytest.warns(UserWarning):
        report, file_id = await train.upload_dataset(api, "", str(bad))
    assert file_id is None and "Rejected" in report
    assert "line 2: not a chat record" in report and "line 4" in report
    good = tmp_path / "good.jsonl"
    good.write_text('{"messages": []}\n{"messages": []}\n')
    report, file_id = await train.upload_dataset(api, "", str(good))
    assert file_id == "file-1" and "2 valid rows" in report


async def test_job_launch_and_live_loss_until_succeeded(api):
    preset = next(iter(PRESETS))
    job_id, progress, timer, status = await train.launch_job(api, "", BASE, "file-1", preset, "x", 1)
    assert job_id == "ftjob-1" and "created" in status
    ticks = [await train.poll_job(api, "", job_id) for _ in range(3)]
    plot, progress, timer, status = ticks[-1]
    assert list(plot[plot.series == "train"].step) == [1, 2, 3, 4, 5, 6]
    assert "succeeded" in progress and f"ft:{BASE}:x:ftjob-1" in progress
    assert timer.active is False
    assert ticks[0][2].active is True
    assert train._finished_marker(progress) == progress


async def test_job_on_missing_endpoint_says_not_available():
    with running_fake_api() as url:
        with pytest.warns(UserWarning):
            status = await train.cancel_job(url, "", "ftjob-1")
    assert status == "⚠️ POST /v1/fine_tuning/jobs/ftjob-1/cancel is not available on this server."


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


async def test_adapter_archive_upload(api, tmp_path: Path):
    archive = tmp_path / "my-adapter.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert (await adapters.upload_adapter(api, ADMIN_KEY, "", str(archive))).startswith("✅")
    table, _, _ = await adapters.load_adapters(api, "")
    assert "my-adapter" in list(table["name"])
    with pytest.warns(UserWarning):
        refused = await adapters.upload_adapter(api, "", "x", str(archive))
    assert "HTTP 401" in refused
    wrong = tmp_path / "adapter.rar"
    wrong.write_bytes(b"x")
    with pytest.warns(UserWarning):
        refused = await adapters.upload_adapter(api, ADMIN_KEY, "y", str(wrong))
    assert "not a .zip" in refused
    with pytest.warns(UserWarning):
        assert "Choose an adapter archive" in await adapters.upload_adapter(api, ADMIN_KEY, "", None)
