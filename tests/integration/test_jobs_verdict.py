"""From a job to a trusted verdict, end to end on the shared real server (real Gemma 3 270M
on vLLM) with the official openai SDK: a job with default settings on a task the project
never trained on is evaluated on rows it never saw, beats the base with a CI above 0 and is
promoted to its alias; a deliberately useless second job is refused by the gate and the
alias keeps serving the first."""

from __future__ import annotations

import json
import time

import openai
import pytest

from bench.small_data import jsonl, split_task

pytestmark = pytest.mark.slow
ALIAS = "sql-commands"


def _wait_evaluation(sdk, job_id: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in {"failed", "cancelled"}:
            raise AssertionError(f"job {job_id} {job.status}: {job.error}")
        if (job.evaluation or {}).get("status") in {"done", "failed", "skipped"}:
            return job
        time.sleep(2)
    raise AssertionError(f"job {job_id} not evaluated after {timeout}s: {job.status}, "
                         f"{job.evaluation}")


def _answer(sdk, model: str, messages: list[dict]) -> str:
    reply = sdk.chat.completions.create(model=model, messages=messages, temperature=0,
                                        max_tokens=40)
    return reply.choices[0].message.content


def test_job_is_judged_promoted_and_a_useless_one_is_refused(live_server):
    sdk = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.user_key,
                        max_retries=5)
    train, held_out = split_task("sql", seed=0)  # 40 training rows, 20 never trained on
    training = sdk.files.create(file=("sql-train.jsonl", jsonl(train).encode()),
                                purpose="fine-tune")
    validation = sdk.files.create(file=("sql-held-out.jsonl", jsonl(held_out).encode()),
                                  purpose="fine-tune")

    # 1. Defaults: no hyperparameters, `auto` picks them; the alias to promote to.
    good = sdk.fine_tuning.jobs.create(
        model=live_server.model_id, training_file=training.id, validation_file=validation.id,
        suffix="sql", seed=0, metadata={"alias": ALIAS})
    good = _wait_evaluation(sdk, good.id, timeout=1200)
    evaluation = good.evaluation
    assert evaluation["status"] == "done", evaluation
    assert evaluation["verdict"] == "beats the base" and evaluation["promoted"], evaluation

    # 2. result_files and events carry base-vs-adapter figures with CIs on the held-out rows.
    summary = json.loads(sdk.files.content(good.result_files[0]).content)
    figures = summary["figures"]
    assert figures["rows"] == len(held_out) and figures["metric"] == "exact_match"
    vs_base = figures["vs_base"]["candidate"]["exact_match"]
    assert vs_base["low"] > 0, figures
    assert figures["stop_share"]["candidate"] >= 0.5, figures
    events = [e.message for e in sdk.fine_tuning.jobs.list_events(good.id, limit=200)]
    assert any(m.startswith(f"Evaluation on {len(held_out)} held-out rows, exact_match: base")
               for m in events), events
    assert f"Promoted: alias {ALIAS} now serves {good.fine_tuned_model}." in events

    # 3. Chat through the alias is the adapter's answer, not the base's.
    prompt = held_out[0]["messages"][:-1]
    via_alias = _answer(sdk, ALIAS, prompt)
    assert via_alias == _answer(sdk, good.fine_tuned_model, prompt)
    assert via_alias != _answer(sdk, live_server.model_id, prompt)

    # 4. One step at a tiny learning rate: no better than the base, worse than the current
    # target; the gate refuses it and the alias keeps serving the first adapter.
    useless = sdk.fine_tuning.jobs.create(
        model=live_server.model_id, training_file=training.id, validation_file=validation.id,
        suffix="sql-bad", seed=0, metadata={"alias": ALIAS},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "max_steps": 1, "learning_rate_multiplier": 0.01}}})
    useless = _wait_evaluation(sdk, useless.id, timeout=600)
    assert useless.evaluation["status"] == "done", useless.evaluation
    assert not useless.evaluation["promoted"]
    gate = useless.evaluation["decision"]
    assert not gate["beats_base"] and gate["regresses"], gate
    summary = json.loads(sdk.files.content(useless.result_files[0]).content)
    assert summary["current_target"] == good.fine_tuned_model
    alias = sdk.get(f"/aliases/{ALIAS}", cast_to=object)
    assert alias["adapter"] == good.fine_tuned_model
    assert [(d["action"], d["adapter"]) for d in alias["decisions"]] == [
        ("refused", useless.fine_tuned_model), ("promote", good.fine_tuned_model)]
    assert _answer(sdk, ALIAS, prompt) == via_alias
