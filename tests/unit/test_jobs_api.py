"""/v1/fine_tuning/jobs through the official openai SDK, the supervisor running the
contract-#1 fake trainer: status flow, events and checkpoints, cancel, failures, bad input."""

from __future__ import annotations

import json
import os
import re
import sys

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, CHAT_ROWS, FAKE_TRAINER, build_jobs_app, wait_for

TERMINAL = {"succeeded", "failed", "cancelled"}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def make_client(isolated_home, tmp_path):
    clients = []

    def make(**kwargs):
        app = build_jobs_app(tmp_path, **kwargs)
        http = TestClient(app).__enter__()
        clients.append(http)
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
        file_id = sdk.files.create(file=("t.jsonl", _jsonl(CHAT_ROWS)), purpose="fine-tune").id
        return app, sdk, file_id

    yield make
    for http in clients:
        http.__exit__(None, None, None)


def _hp(**extra):
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, **extra}}}


def _finished(sdk, job_id):
    return wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j)


def test_job_succeeds_and_reports_events_and_checkpoints(make_client):
    app, sdk, file_id = make_client()
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id, suffix="demo",
                                      seed=7, method=_hp(max_steps=6, save_steps=2, lora_rank=8))
    assert job.status in {"queued", "running"} and job.fine_tuned_model is None
    assert job.seed == 7 and job.hyperparameters.n_epochs == 1
    assert job.method.supervised.hyperparameters.model_extra["lora_rank"] == 8
    done = _finished(sdk, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{BASE_ID}:demo:{job.id}"
    assert done.trained_tokens == 600 and done.finished_at >= done.created_at
    assert app.state.loaded[0][0] == done.fine_tuned_model  # went through on_success

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(metrics)] == [1, 2, 3, 4, 5, 6]
    assert all("train_loss" in e.data for e in metrics)
    assert "training loss=" in metrics[0].message
    # the final held-out loss joins the last step's event instead of repeating the step
    assert metrics[0].data["valid_loss"] == 1.5 and "validation loss=1.5" in metrics[0].message
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed."
    assert messages[-1].startswith("Validating training file")

    # cursor pagination: newest first, pages of 3 chained by `after`
    page = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    nxt = sdk.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert nxt.data[0].id == events[3].id
    assert [e.id for e in sdk.fine_tuning.jobs.list_events(job.id, limit=3)] == [
        e.id for e in events]  # the SDK's auto-pagination walks all pages

    ckpts = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [2, 4, 6]
    assert ckpts[0].fine_tuned_model_checkpoint.startswith(f"ft:{BASE_ID}:demo:{job.id}:ckpt-step-")


def test_jobs_are_listed_newest_first_and_paginated(make_client):
    _, sdk, file_id = make_client()
    ids = [sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                       method=_hp(max_steps=1)).id for _ in range(3)]
    page = sdk.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=2)] == ids[::-1]
    for job_id in ids:
        assert _finished(sdk, job_id).status == "succeeded"


def test_cancel_running_job_stops_worker_and_leaves_no_adapter(make_client, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STEP_S", "0.5")
    app, sdk, file_id = make_client()
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(max_steps=40))
    wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "running")
    # a queued second job is cancelled at once
    queued = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                         method=_hp(max_steps=1))
    assert sdk.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    sdk.fine_tuning.jobs.cancel(job.id)
    done = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in TERMINAL and j,
                    timeout=5)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    store = app.state.jobs_store
    out = store.runs_dir / job.id / "output"
    assert not (out / job.id).exists() and not (out / ".checkpoints" / job.id).exists()
    assert app.state.loaded == []
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.cancel(job.id)  # already finished


def test_training_error_fails_job_with_reason(make_client, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_AT", "2")
    _, sdk, file_id = make_client()
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(max_steps=4))
    done = _finished(sdk, job.id)
    assert done.status == "failed" and done.error.message == "boom at step 2"
    assert done.fine_tuned_model is None
    assert any(e.level == "error" for e in sdk.fine_tuning.jobs.list_events(job.id))


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_file_bad_since_upload_fails_the_job_at_validation(make_client, damage):
    # "Validating training file" really validates: the stored file is read again with the
    # trainer's loader, and a job on a file damaged since upload fails there, never queued.
    app, sdk, file_id = make_client()
    stored = app.state.jobs_store.get_file(file_id)["path"]
    if damage == "corrupt":
        with open(stored, "a") as fh:
            fh.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    else:
        os.unlink(stored)
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(max_steps=1))
    assert job.status == "failed"
    assert job.error.code == "invalid_file" and job.error.param == "training_file"
    assert file_id in job.error.message
    assert ("line 3" in job.error.message if damage == "corrupt"
            else "stored file is missing" in job.error.message)
    assert stored not in job.error.message  # no server paths in errors
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0].startswith("Fine-tuning job failed: invalid training_file")
    assert not any("queued" in m for m in events)
    assert app.state.loaded == []


def test_adapter_rejected_by_registry_fails_job(make_client):
    async def reject(job, adapter):
        raise ValueError("rank 64 is above max_lora_rank 16")

    _, sdk, file_id = make_client(on_success=reject)
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(max_steps=1))
    done = _finished(sdk, job.id)
    assert done.status == "failed" and done.error.code == "adapter_rejected"
    assert "max_lora_rank" in done.error.message


@pytest.mark.parametrize(
    ("kwargs", "exc", "param"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model"),
        ({"training_file": "file-missing"}, openai.BadRequestError, "training_file"),
        ({"validation_file": "file-missing"}, openai.BadRequestError, "validation_file"),
        ({"suffix": "bad/suffix"}, openai.BadRequestError, "suffix"),
        ({"suffix": "s" * 40}, openai.BadRequestError, "suffix"),  # id would pass 64 chars
        ({"method": {"type": "reinforcement"}}, openai.BadRequestError, "method.type"),
        ({"method": {"type": "dpo", "supervised": {}}}, openai.BadRequestError,
         "method.supervised"),
        ({"method": _hp(beta=0.1)}, openai.BadRequestError, "method.supervised.hyperparameters"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"gamma": 1}}}},
         openai.BadRequestError, "method.dpo.hyperparameters"),
        ({"method": _hp(bogus=1)}, openai.BadRequestError, "method.supervised.hyperparameters"),
        ({"method": _hp(lora_rank=0)}, openai.BadRequestError,
         "method.supervised.hyperparameters"),
        ({"metadata": {"alias": "bad/alias"}}, openai.BadRequestError, "metadata.alias"),
        ({"metadata": {"alias": "ok", "auto_promote": "maybe"}}, openai.BadRequestError,
         "metadata.auto_promote"),
        ({"metadata": {"auto_promote": "true"}}, openai.BadRequestError,
         "metadata.auto_promote"),
        ({"method": _hp(lora_rank=32)}, openai.BadRequestError,  # above max_lora_rank 16
         "method.supervised.hyperparameters.lora_rank"),
    ],
)
def test_bad_job_requests_fail_at_creation(make_client, kwargs, exc, param):
    _, sdk, file_id = make_client()
    args = {"model": BASE_ID, "training_file": file_id, **kwargs}
    with pytest.raises(exc) as err:
        sdk.fine_tuning.jobs.create(**args)
    assert err.value.body["param"] == param
    assert list(sdk.fine_tuning.jobs.list()) == []


def test_unknown_job_is_404(make_client):
    _, sdk, _ = make_client()
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        list(sdk.fine_tuning.jobs.list_events("ftjob-nope"))


def test_job_config_maps_openai_and_lora_settings(make_client):
    app, sdk, file_id = make_client()
    job = sdk.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file_id, validation_file=file_id, seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
        method=_hp(lora_rank=8, lora_alpha=16, qlora=True, max_steps=1))
    config = app.state.jobs_store.get_job(job.id)["train_config"]
    assert config["num_epochs"] == 1  # method's hyperparameters win over the deprecated ones
    assert config["micro_batch_size"] == 4 and config["learning_rate"] == pytest.approx(1e-4)
    assert (config["lora_r"], config["lora_alpha"], config["adapter"]) == (8, 16, "qlora")
    assert config["seed"] == 3 and config["max_steps"] == 1
    assert config["val_datasets"][0]["path"].endswith(".jsonl")
    assert job.hyperparameters.batch_size == 4 and job.validation_file == file_id


def _numbered_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"stop container {i}"},
                          {"role": "assistant", "content": f"docker stop c{i}"}]}
            for i in range(n)]


def test_auto_hyperparameters_and_held_out_rows_follow_the_row_count(make_client):
    app, sdk, _ = make_client()
    file_id = sdk.files.create(file=("t30.jsonl", _jsonl(_numbered_rows(30))),
                               purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file_id, seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": "auto", "max_steps": 2}}})
    # 30 rows: 4 held out (10%, at least 4); 26 trained on: 100 // 26 = 3 epochs, batch 1.
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size,
            job.hyperparameters.learning_rate_multiplier) == (3, 1, 1.0)
    config = app.state.jobs_store.get_job(job.id)["train_config"]
    assert config["val_set_size"] == 4 and config["seed"] == 3 and not config["val_datasets"]
    assert _finished(sdk, job.id).status == "succeeded"
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any("4 of the training file's 30 rows are kept out" in m for m in messages)


def test_too_small_to_hold_out_says_so_and_validation_file_wins(make_client):
    app, sdk, tiny_file = make_client()  # CHAT_ROWS: 2 rows
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=tiny_file,
                                      method=_hp(max_steps=2))
    assert app.state.jobs_store.get_job(job.id)["train_config"]["val_set_size"] == 0
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    warning = next(e for e in events if e.message.startswith("Held-out rows: none"))
    assert warning.level == "warn" and "fewer than 10" in warning.message
    assert _finished(sdk, job.id).status == "succeeded"

    big = sdk.files.create(file=("t30.jsonl", _jsonl(_numbered_rows(30))),
                           purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=big,
                                      validation_file=tiny_file, method=_hp(max_steps=2))
    config = app.state.jobs_store.get_job(job.id)["train_config"]
    assert config["val_set_size"] == 0 and len(config["val_datasets"]) == 1
    assert _finished(sdk, job.id).status == "succeeded"


@pytest.mark.parametrize(
    ("processes", "message"),
    [(2, "above this worker's max_processes (1"), (0, "at least 1"), ("two", "at least 1"),
     (1.5, "at least 1")],
)
def test_num_processes_beyond_the_worker_is_refused_by_name(make_client, processes, message):
    _, sdk, file_id = make_client()  # max_processes defaults to 1
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                    method=_hp(num_processes=processes))
    assert err.value.body["param"] == "method.supervised.hyperparameters.num_processes"
    assert message in err.value.body["message"]
    assert list(sdk.fine_tuning.jobs.list()) == []


def test_num_processes_launches_the_multi_process_command(make_client, tmp_path, monkeypatch):
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_TRAIN_ARGV_FILE", str(argv_file))
    launcher = [sys.executable, str(FAKE_TRAINER), "--num_processes={n}", "--port={port}"]
    _, sdk, file_id = make_client(max_processes=4, multi_process_command=launcher)

    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(num_processes=4, max_steps=2))
    assert job.method.supervised.hyperparameters.model_extra["num_processes"] == 4
    assert _finished(sdk, job.id).status == "succeeded"
    argv = json.loads(argv_file.read_text())
    assert argv[0] == "--num_processes=4" and re.fullmatch(r"--port=\d+", argv[1])
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Fine-tuning job started. (4 processes)" in events

    one = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id,
                                      method=_hp(max_steps=2))
    assert _finished(sdk, one.id).status == "succeeded"
    assert not json.loads(argv_file.read_text())[0].startswith("--")  # train_command as before


def test_default_multi_process_command_is_an_accelerate_launch_of_tuneserve_train():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from service.jobs.settings import JobsSettings

    command = [a.replace("{n}", "2").replace("{port}", "29511")
               for a in JobsSettings().multi_process_command]
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    parsed = launch_command_parser().parse_args([*command[3:], "config.yaml"])
    args, _, _ = _validate_launch_command(parsed)
    assert args.multi_gpu and args.num_processes == 2 and args.main_process_port == 29511
    assert args.module and args.training_script == "tuneserve.cli"
    assert args.training_script_args == ["train", "config.yaml"]
