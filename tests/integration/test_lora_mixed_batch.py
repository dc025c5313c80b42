"""Base answers stay base in a mixed batch (real vLLM, real Gemma, the shared server).

With ``max_loras`` = N (the server's default 4) and N different adapters in flight, every
LoRA slot is full: that is where vLLM 0.32's own CPU ops give base rows the last slot's
adapter. Greedy base requests sent together with adapter requests must be token-identical
to the same requests sent alone, and so must the adapter requests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
MAX_LORAS = 4  # tuneserve's default, which the shared live_server runs with
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_PROMPTS = ["Delete the branch feature-x.", "Show all running docker containers.",
                "What is the capital of France?", "Write a haiku about the sea."]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def mixed_adapters(live_server, real_model_dir, tmp_path_factory):
    """N adapters of ranks 8 and 16 on every linear layer, registered on the live server."""
    names = []
    for index in range(MAX_LORAS):
        folder = tmp_path_factory.mktemp(f"mixed-adapter-{index}") / "adapter"
        make_lora_adapter(real_model_dir, folder, r=(8, 16)[index % 2], seed=100 + index,
                          target_modules=ALL_LINEAR)
        name = f"mixed-{index}"
        live_server.register_adapter(folder, name)
        names.append(name)
    yield names
    for name in names:
        live_server.unregister_adapter(name)


def _completion(server, model: str, prompt: str) -> list[int]:
    """The greedy completion as its list of tokens (from the logprobs)."""
    with httpx.Client(base_url=server.base_url, timeout=600,
                      headers={"Authorization": f"Bearer {server.user_key}"}) as client:
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": True,
        })
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    return [item["token"] for item in content]


def test_lora_ops_reported(live_server):
    health = httpx.get(f"{live_server.base_url}/health").json()
    assert health["lora_ops"] == "tuneserve-grouped", health
    assert "GroupedPunicaWrapperCPU" in live_server.log_path.read_text(errors="replace")


def test_base_and_adapters_unchanged_in_mixed_batch(live_server, mixed_adapters):
    base = live_server.model_id
    jobs = [(base, prompt) for prompt in BASE_PROMPTS]
    adapter_jobs = [(name, BASE_PROMPTS[i]) for i, name in enumerate(mixed_adapters)]
    jobs += adapter_jobs
    alone = {job: _completion(live_server, *job) for job in jobs}
    # The adapters must really change the answers, or the mixed run proves nothing.
    assert all(alone[(name, prompt)] != alone[(base, prompt)] for name, prompt in adapter_jobs)

    for _ in range(2):
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = dict(zip(jobs, pool.map(lambda job: _completion(live_server, *job), jobs),
                                strict=True))
        for job in jobs:
            assert together[job] == alone[job], f"{job[0]} on {job[1]!r} changed when batched"
