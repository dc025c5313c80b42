"""HTTP layer of the serving app against a fake engine (fast): the error envelope, auth,
admission control, SSE framing, model listing. The same features run on real vLLM in
tests/integration/test_service_openai.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.settings import Settings
from tests.unit.service_fake_engine import FakeEngine

USER_KEY = "user-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {client.get('/ready').json()}")


def _factory(engine_holder: dict, **kw):
    def factory(settings, model_path: Path, base_id: str):
        from transformers import AutoTokenizer

        engine = FakeEngine(model_path=model_path,
                            tokenizer=AutoTokenizer.from_pretrained(model_path), **kw)
        engine_holder["engine"] = engine
        return engine

    return factory


@pytest.fixture
def make_client(tiny_model_dir, isolated_home, monkeypatch):
    monkeypatch.setenv("TUNESERVE_UI", "0")
    clients = []

    def make(engine_kw=None, **settings_kw):
        holder: dict = {}
        settings = Settings(base_model=str(tiny_model_dir), served_model_name="tiny",
                            **settings_kw)
        app = build_app(settings, _factory(holder, **(engine_kw or {})))
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        _wait_ready(client)
        client.engine = holder["engine"]
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _assert_error(response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def _chat(**kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": "list containers"}], **kw}


def test_health_ready_and_models(make_client):
    client = make_client()
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["lora_ops"] in {"tuneserve-grouped", "vllm"}
    assert client.get("/ready").json()["status"] == "ready"
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"


def test_chat_non_stream_uses_chat_template_and_counts_usage(make_client):
    client = make_client()
    body = client.post("/v1/chat/completions", json=_chat(max_tokens=50)).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "docker ps"}
    prompt_ids = client.engine.calls[0][0]
    from training.chat_format import encode_prompt

    assert prompt_ids == encode_prompt(client.engine.tokenizer,
                                       [{"role": "user", "content": "list containers"}])
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_chat_stream_sse_with_usage_and_done(make_client):
    client = make_client()
    with client.stream("POST", "/v1/chat/completions",
                       json=_chat(stream=True, stream_options={"include_usage": True})) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "docker ps"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_chat_n_and_logprobs(make_client):
    client = make_client()
    body = client.post("/v1/chat/completions",
                       json=_chat(n=2, logprobs=True, top_logprobs=1)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == "docker ps"
    assert all(c["logprob"] == -0.5 for c in content)


def test_completions_echo_scores_prompt(make_client):
    client = make_client()
    body = client.post("/v1/completions", json={
        "model": "tiny", "prompt": "docker run nginx", "max_tokens": 0, "echo": True,
        "logprobs": 0}).json()
    choice = body["choices"][0]
    assert choice["text"] == "docker run nginx"
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None and all(v == -1.0 for v in lp["token_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 0


def test_completions_batch_prompts_and_stream(make_client):
    client = make_client()
    body = client.post("/v1/completions", json={
        "model": "tiny", "prompt": ["a", "b"], "n": 2, "max_tokens": 5}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    with client.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "a", "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[:-1]) == "docker ps"


def test_unknown_model_404(make_client):
    client = make_client()
    error = _assert_error(client.post("/v1/chat/completions", json=_chat(model="nope")),
                          404, "model_not_found", "model")
    assert "nope" in error["message"]
    _assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


@pytest.mark.parametrize("bad", [
    {"temperature": 5}, {"n": 0}, {"top_p": 0}, {"max_tokens": -1}, {"messages": []},
    {"messages": [{"role": "robot", "content": "x"}]}, {"top_logprobs": 3},
])
def test_bad_params_400(make_client, bad):
    client = make_client()
    error = _assert_error(client.post("/v1/chat/completions", json=_chat(**bad)), 400)
    assert error["type"] == "invalid_request_error"


def test_invalid_json_400(make_client):
    client = make_client()
    _assert_error(client.post("/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"}), 400)


def test_prompt_too_long_400(make_client):
    client = make_client()
    long = " ".join(["docker"] * 400)
    error = _assert_error(
        client.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": long}])),
        400, "context_length_exceeded")
    assert "maximum context length is 256" in error["message"]
    _assert_error(client.post("/v1/completions", json={"model": "tiny", "prompt": "a",
                                                        "max_tokens": 1000}),
                  400, "context_length_exceeded", "max_tokens")


def test_unknown_route_404_envelope(make_client):
    client = make_client()
    _assert_error(client.get("/v1/nothing-here"), 404)


def test_auth_roles(make_client):
    client = make_client(user_api_keys=USER_KEY, admin_api_keys=ADMIN_KEY)
    _assert_error(client.get("/v1/models"), 401, "invalid_api_key")
    _assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-123"}),
                  401, "invalid_api_key")
    user = {"Authorization": f"Bearer {USER_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert client.get("/v1/models", headers=user).status_code == 200
    assert client.post("/v1/chat/completions", json=_chat(), headers=admin).status_code == 200
    _assert_error(client.post("/v1/adapters", json={"name": "a", "path": "/x"}, headers=user),
                  403, "insufficient_permissions")
    _assert_error(client.delete("/v1/adapters/a", headers=user), 403)
    _assert_error(client.post("/v1/load_lora_adapter",
                              json={"lora_name": "a", "lora_path": "/x"}, headers=user), 403)
    # an admin passes auth and reaches the adapter checks
    _assert_error(client.post("/v1/adapters", json={"name": "a", "path": "/nonexistent"},
                              headers=admin), 400, "adapter_not_found")
    assert client.get("/health").status_code == 200  # probes need no key


def test_eval_schedule_runs_in_the_service_and_is_listed(make_client, monkeypatch):
    import asyncio
    import sys

    from service.reports import schedule

    client = make_client(user_api_keys=USER_KEY, admin_api_keys=ADMIN_KEY, port=8123,
                         eval_schedules="0 3 * * *|docker-commands|base,docker-lora")
    scheduler = client.app.state.eval_scheduler
    assert len(scheduler.tasks) == 1 and not scheduler.tasks[0].done()
    _assert_error(client.get("/reports/schedules"), 401)
    # A user key sees an admin's entry only when it may use every model it names (the
    # adapter docker-lora is not served here): the admin sees it.
    assert client.get("/reports/schedules", headers={"Authorization": f"Bearer {USER_KEY}"}
                      ).json()["data"] == []
    listing = client.get("/reports/schedules",
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert listing["object"] == "list"
    (item,) = listing["data"]
    assert (item["cron"], item["suite"], item["models"]) == ("0 3 * * *", "docker-commands",
                                                             "base,docker-lora")
    assert item["next_run_at"].endswith("T03:00:00+00:00") and item["runs"] == 0

    # What a fire runs: eval run against this server, with an admin key (the entry names no
    # project) in the environment only.
    seen: dict = {}

    async def fake_subprocess(argv, env, log_path):
        seen.update(argv=argv, env=env, log_path=log_path)
        return 0

    monkeypatch.setattr(schedule, "run_subprocess", fake_subprocess)
    entry = client.app.state.settings.eval_schedules[0]
    assert asyncio.run(scheduler._runner(entry)) == 0
    from tuneserve.home import reports_dir, tuneserve_home

    assert seen["argv"] == [sys.executable, "-m", "tuneserve.cli", "eval", "run",
                            "docker-commands", "--models", "base,docker-lora",
                            "--server", "http://127.0.0.1:8123/v1",
                            "--output-dir", str(reports_dir())]
    assert seen["env"]["TUNESERVE_API_KEY"] == ADMIN_KEY
    assert ADMIN_KEY not in " ".join(seen["argv"])
    assert seen["log_path"] == tuneserve_home() / "eval-schedules" / "0.log"


def test_overload_429_with_retry_after(make_client):
    import threading

    client = make_client(engine_kw={"delay_s": 0.2}, max_in_flight=1)
    results = {}

    def slow():
        results["first"] = client.post("/v1/chat/completions", json=_chat())

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 5
    while not client.engine.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    response = client.post("/v1/chat/completions", json=_chat())
    thread.join()
    _assert_error(response, 429, "rate_limit_exceeded")
    assert response.headers["retry-after"] == "1"
    assert results["first"].status_code == 200


def test_admission_charges_n_times_prompts(make_client):
    import threading

    client = make_client(engine_kw={"delay_s": 0.2}, max_in_flight=4)
    # n x prompts over the whole limit can never run: a 400 naming n, not a retry.
    too_many = client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b", "c"],
                                                    "n": 2, "max_tokens": 2})
    _assert_error(too_many, 400, param="n")
    results = {}

    def three_sequences():
        results["first"] = client.post("/v1/chat/completions", json=_chat(n=3))

    thread = threading.Thread(target=three_sequences)
    thread.start()
    deadline = time.monotonic() + 5
    while not client.engine.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    # 3 of 4 sequences are taken: two more prompts do not fit, one does.
    two = client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"],
                                               "max_tokens": 2})
    one = client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
    thread.join()
    _assert_error(two, 429, "rate_limit_exceeded")
    assert one.status_code == 200 and results["first"].status_code == 200


def test_engine_starting_503_then_failure(tiny_model_dir, isolated_home, monkeypatch):
    import threading

    monkeypatch.setenv("TUNESERVE_UI", "0")
    gate = threading.Event()

    def failing_factory(settings, model_path, base_id):
        gate.wait(5)
        raise RuntimeError("out of memory")

    app = build_app(Settings(base_model=str(tiny_model_dir)), failing_factory)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        response = client.get("/v1/models")
        _assert_error(response, 503, "engine_unavailable")
        assert response.headers["retry-after"] == "5"
        gate.set()
        deadline = time.monotonic() + 5
        while client.get("/ready").json()["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "out of memory" in client.get("/ready").json()["reason"]


def test_metrics_count_requests_per_model(make_client):
    client = make_client()
    client.post("/v1/chat/completions", json=_chat())
    client.post("/v1/chat/completions", json=_chat(model="missing"))
    text = client.get("/metrics").text
    assert 'tuneserve_requests_total{endpoint="chat",model="tiny",status="200"}' in text
    assert 'tuneserve_requests_total{endpoint="chat",model="unknown",status="404"}' in text
    assert "tuneserve_time_to_first_token_seconds_bucket" in text
    assert 'tuneserve_requests_in_flight{model="tiny"} 0.0' in text


async def test_closing_a_stream_aborts_the_engine_request(tiny_model_dir):
    from transformers import AutoTokenizer

    from service.chat.protocol import ChatCompletionRequest
    from service.chat.serving import ChatServing
    from service.generation import Generator

    engine = FakeEngine(model_path=tiny_model_dir,
                        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), delay_s=0.01)
    generator = Generator(engine, registry=None, base_id="tiny", max_in_flight=4)
    serving = ChatServing(generator, engine.tokenizer)
    chunks = await serving.create(ChatCompletionRequest(**_chat(stream=True)))
    await chunks.__anext__()  # role chunk
    await chunks.__anext__()  # first token
    assert generator.in_flight == 1
    await chunks.aclose()  # what Starlette does when the client goes away
    assert len(engine.aborted) == 1 and generator.in_flight == 0


def test_cli_settings_errors_and_localhost_binding(monkeypatch, capsys):
    from service.cli import _is_loopback
    from tuneserve.cli import main

    assert main(["serve", "--max-lora-rank", "12"]) == 2
    assert "max_lora_rank must be one of" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert "unknown base model" in capsys.readouterr().err
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.0.0.1")


def test_vllm_validation_errors_are_400(make_client):
    client = make_client()
    # vLLM refuses n > 1 with greedy sampling; the client gets a 400, not a 500.
    error = _assert_error(client.post("/v1/chat/completions", json=_chat(n=2, temperature=0)),
                          400)
    assert "greedy" in error["message"]


async def test_closing_a_multi_prompt_stream_aborts_every_engine_request(tiny_model_dir):
    # The prompts' streams are merged (vLLM's merge_async_iterators): items come as
    # (prompt index, output), and closing the response aborts every prompt's request.
    from transformers import AutoTokenizer

    from service.completions.protocol import CompletionRequest
    from service.completions.serving import CompletionServing
    from service.generation import Generator

    engine = FakeEngine(model_path=tiny_model_dir,
                        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), delay_s=0.01)
    generator = Generator(engine, registry=None, base_id="tiny", max_in_flight=4)
    serving = CompletionServing(generator, engine.tokenizer)
    chunks = await serving.create(CompletionRequest(model="tiny", prompt=["a", "b"],
                                                    max_tokens=5, stream=True))
    first = await chunks.__anext__()
    assert first  # a token of one of the prompts
    await chunks.aclose()  # what Starlette does when the client goes away
    assert len(set(engine.aborted)) == 2 and generator.in_flight == 0
