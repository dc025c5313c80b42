"""The fine-tuning jobs API checks data before queueing: rows longer than sequence_len are
refused with their line, duplicates and the work estimate are reported as an event."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_app import BASE_ID, CHAT_ROWS, build_jobs_app


@pytest.fixture
def sdk(isolated_home, tiny_model_dir):
    app = build_jobs_app(tiny_model_dir)  # a real tokenizer: lengths are counted in tokens
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)


def _upload(sdk, rows) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return sdk.files.create(file=("t.jsonl", data), purpose="fine-tune").id


def _hp(**extra):
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, **extra}}}


def test_rows_longer_than_sequence_len_are_refused_before_queueing(sdk):
    long = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "docker ps"},
        ]
    }
    file_id = _upload(sdk, [*CHAT_ROWS, long])
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(
            model=BASE_ID, training_file=file_id, method=_hp(sequence_len=64)
        )
    assert err.value.body["param"] == "training_file"
    assert "line 3: too long" in err.value.body["message"]
    assert list(sdk.fine_tuning.jobs.list()) == []


def test_duplicates_and_estimate_are_reported_as_an_event(sdk):
    file_id = _upload(sdk, [*CHAT_ROWS, CHAT_ROWS[0], *CHAT_ROWS])
    job = sdk.fine_tuning.jobs.create(model=BASE_ID, training_file=file_id, method=_hp())
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id)]
    check = next(m for m in events if m.startswith("Data check: "))
    assert "duplicate rows" in check and "tokens in" in check
    sdk.fine_tuning.jobs.cancel(job.id)
