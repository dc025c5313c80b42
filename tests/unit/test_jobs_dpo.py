"""``method.type = "dpo"`` on /v1/fine_tuning/jobs, as OpenAI has it: OpenAI's DPO rows,
``method.dpo.hyperparameters`` (``beta`` and the rest) mapped onto ``rl: dpo``, unsupported
keys refused by name, and a real DPO run (TRL's DPOTrainer) on the tiny model."""

from __future__ import annotations

import json
import sys

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, CHAT_ROWS, build_jobs_app, wait_for

from training.manifest import read_manifest

PAIRS = [
    {"input": {"messages": [{"role": "user", "content": f"{question} ({i})"}]},
     "preferred_output": [{"role": "assistant", "content": command}],
     "non_preferred_output": [{"role": "assistant", "content": "I am not sure."}]}
    for i in range(3)
    for question, command in (("list containers", "docker ps"), ("list images", "docker images"))
]


def _upload(sdk, rows) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return sdk.files.create(file=("t.jsonl", data), purpose="fine-tune").id


def _dpo(**hp):
    return {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, **hp}}}


@pytest.fixture
def jobs(isolated_home, tiny_model_dir):
    """The jobs API over the tiny model, training with the real `tuneserve train`."""
    app = build_jobs_app(tiny_model_dir, evaluate_on_success=False,
                         train_command=[sys.executable, "-m", "tuneserve.cli", "train"])
    with TestClient(app) as http:
        yield app, openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)


def test_dpo_job_trains_with_trl_dpo_and_reports_beta(jobs):
    app, sdk = jobs
    file_id = _upload(sdk, PAIRS)
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id, seed=1,
                                      method=_dpo(beta=0.25, batch_size=4, max_steps=2))
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
    config = app.state.jobs_store.get_job(job.id)["train_config"]
    assert (config["rl"], config["rl_beta"]) == ("dpo", 0.25)
    done = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in
                    {"succeeded", "failed", "cancelled"} and j, timeout=120)
    assert done.status == "succeeded", done.error
    ((_, adapter),) = app.state.loaded
    manifest = read_manifest(adapter)
    assert manifest["training"] == "dpo" and manifest["config"]["rl_beta"] == 0.25
    assert manifest["steps"] == 2


def test_beta_auto_is_trls_default(jobs):
    app, sdk = jobs
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=_upload(sdk, PAIRS),
                                      method=_dpo(beta="auto", max_steps=1))
    assert job.method.dpo.hyperparameters.beta == 0.1
    assert app.state.jobs_store.get_job(job.id)["train_config"]["rl_beta"] == 0.1
    sdk.fine_tuning.jobs.cancel(job.id)


@pytest.mark.parametrize(
    ("rows", "method", "message"),
    [
        (CHAT_ROWS, _dpo(), "rl: dpo trains on preference pairs"),
        (PAIRS, {"type": "supervised"}, "method.type 'dpo'"),
    ],
)
def test_rows_must_fit_the_method(jobs, rows, method, message):
    _, sdk = jobs
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=_upload(sdk, rows),
                                    method=method)
    assert err.value.body["param"] == "training_file" and message in err.value.body["message"]
    assert list(sdk.fine_tuning.jobs.list()) == []
