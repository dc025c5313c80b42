"""Acceptance of projects on a real server (``tuneserve serve``, vLLM engine, tiny model,
a real ``tuneserve train`` worker), driven by the official openai SDK: two projects A and B
from a keys file. A's file, job, batch and the job's adapter are invisible to B (list,
retrieve and chat with the model id give 404); B cannot cancel A's job; an admin sees both.
A report naming A's adapter is A's and the admin's only; ``/metrics`` needs an admin or
the scrape-only metrics key. The fast versions of every rule are in tests/unit/test_tenancy.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.slow
KEYS = {"a": "tenancy-a-key-0123456789", "b": "tenancy-b-key-0123456789",
        "metrics": "tenancy-scrape-key-0123456789"}
ROWS = "".join(json.dumps({"messages": [
    {"role": "user", "content": f"stop container web-{i}"},
    {"role": "assistant", "content": f"docker stop web-{i}"}]}) + "\n"
    for i in range(16)).encode()
CHAT = {"messages": [{"role": "user", "content": "list containers"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tenancy-server")
    keys_file = workdir / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": KEYS["a"], "project": "a"},
                                              {"key": KEYS["b"], "project": "b"},
                                              {"key": KEYS["metrics"], "role": "metrics"}]}))
    # No post-training evaluation: this module is about who sees what, not the gate.
    live = start_server(Path(tiny_model_dir), "tiny-gemma", workdir,
                        env={"TUNESERVE_API_KEYS_FILE": str(keys_file),
                             "TUNESERVE_JOBS_EVALUATE_ON_SUCCESS": "0",
                             "TUNESERVE_JOBS_POLL_INTERVAL_S": "0.2"})
    yield live
    stop_server(live)


def _sdk(server, who: str) -> openai.OpenAI:
    key = server.admin_key if who == "admin" else KEYS[who]
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0,
                         timeout=120)


def _wait(poll, done, timeout: float):
    deadline = time.monotonic() + timeout
    while not done(value := poll()):
        assert time.monotonic() < deadline, value
        time.sleep(0.5)
    return value


def _train(sdk: openai.OpenAI, base: str, training_file: str):
    hp = {"n_epochs": 1, "batch_size": 4, "max_steps": 2, "lora_rank": 8}
    return sdk.fine_tuning.jobs.create(model=base, training_file=training_file,
                                       method={"type": "supervised",
                                               "supervised": {"hyperparameters": hp}})


def test_project_a_objects_are_invisible_to_project_b(server):
    a, b, admin = _sdk(server, "a"), _sdk(server, "b"), _sdk(server, "admin")
    base = a.models.list().data[0].id
    upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
    job = _train(a, base, upload.id)
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.cancel(job.id)
    batch_input = json.dumps({"custom_id": "r0", "method": "POST",
                              "url": "/v1/chat/completions",
                              "body": {"model": base, **CHAT}}).encode() + b"\n"
    batch = a.batches.create(
        input_file_id=a.files.create(file=("in.jsonl", batch_input), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                 lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)
    assert done.status == "succeeded", (done.error, server.log_tail())  # B's cancel did nothing
    model = done.fine_tuned_model
    assert a.chat.completions.create(model=model, **CHAT).choices[0].message is not None

    # B: lists are empty of A's objects, and each id is 404 as if absent.
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    assert b.batches.list().data == []
    assert model not in {m.id for m in b.models.list().data}
    for call in (lambda: b.files.retrieve(upload.id),
                 lambda: b.files.content(upload.id),
                 lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.batches.retrieve(batch.id),
                 lambda: b.models.retrieve(model),
                 lambda: b.chat.completions.create(model=model, **CHAT)):
        with pytest.raises(openai.NotFoundError):
            call()

    # The admin sees both projects' objects; B's own upload is B's.
    b_upload = b.files.create(file=("b.jsonl", ROWS), purpose="fine-tune")
    assert {upload.id, b_upload.id} <= {f.id for f in admin.files.list().data}
    assert admin.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model
    assert admin.batches.retrieve(batch.id).id == batch.id
    assert model in {m.id for m in admin.models.list().data}
    assert [f.id for f in b.files.list().data] == [b_upload.id]


def _a_private_model(server) -> str:
    """A's job's adapter (private to A): the one the test above trained, else a new one."""
    a = _sdk(server, "a")
    done = [j for j in a.fine_tuning.jobs.list().data if j.status == "succeeded"]
    if not done:
        upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
        job = _train(a, a.models.list().data[0].id, upload.id)
        done = [_wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                      lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)]
        assert done[0].status == "succeeded", (done[0].error, server.log_tail())
    return done[0].fine_tuned_model


def test_reports_and_metrics_are_not_another_projects(server):
    """/reports shows a report only to a project that may use every model it names (here
    a report as ``tuneserve eval run --output-dir $TUNESERVE_HOME/reports`` leaves it);
    /metrics answers only an admin or the scrape-only metrics key, which reads nothing else."""
    model = _a_private_model(server)
    base = _sdk(server, "a").models.list().data[0].id
    for report_id, models in (("private-of-a", [base, model]), ("of-the-base", [base])):
        folder = server.home / "reports" / report_id
        folder.mkdir(parents=True)
        (folder / "report.html").write_text(f"<html>{' vs '.join(models)}</html>")
        (folder / "report.json").write_text(json.dumps(
            {"suite": "tenancy", "models": [{"label": m, "model_id": m} for m in models]}))

    def get(who: str, path: str) -> httpx.Response:
        key = server.admin_key if who == "admin" else KEYS[who]
        return httpx.get(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=30)

    def listed(who: str) -> set[str]:
        return {r["id"] for r in get(who, "/reports").json()["data"]}

    assert {"private-of-a", "of-the-base"} <= listed("a")
    assert {"private-of-a", "of-the-base"} <= listed("admin")
    assert "of-the-base" in listed("b") and "private-of-a" not in listed("b")
    assert model not in get("b", "/reports").text
    for path in ("/reports/private-of-a/report.json", "/reports/private-of-a/report.html"):
        hidden = get("b", path)
        assert hidden.status_code == 404 and model not in hidden.text
        assert get("a", path).status_code == 200

    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert metrics.status_code == 401 and metrics.json()["error"]["type"]
    assert get("a", "/metrics").status_code == 403
    for who in ("metrics", "admin"):
        scraped = get(who, "/metrics")
        assert scraped.status_code == 200 and "tuneserve_requests_total" in scraped.text
    assert get("metrics", "/v1/models").status_code == 403
    assert get("metrics", "/reports").status_code == 403
