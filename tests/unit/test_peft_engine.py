"""The transformers+PEFT engine (service/peft_engine.py) on the tiny model: its greedy
tokens equal PEFT's own ``generate`` for every method it serves, token for token; stop
strings, max_tokens and refusals; and through the real app (fake vLLM engine for the base,
the real PEFT engine for these adapters): routing, /v1/models, the OpenAI 400s."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import openai
import pytest

from service.engine import AdapterHandle
from service.peft_engine import PeftEngine
from tests.unit.service_peft import METHODS, make_full_finetune, make_peft_adapter, peft_greedy


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-adapters")
    # AdaLoRA's singular values start at zero: a larger push to change the outputs.
    made = {m: make_peft_adapter(tiny_model_dir, root / m, m,
                                 scale=5.0 if m == "adalora" else 0.5) for m in METHODS}
    made["ia3-b"] = make_peft_adapter(tiny_model_dir, root / "ia3-b", "ia3", seed=1, scale=2.0)
    made["full"] = make_full_finetune(tiny_model_dir, root / "full")
    return made


def _params(**kw):
    from vllm.sampling_params import SamplingParams

    return SamplingParams(**{"temperature": 0.0, "max_tokens": 10, "ignore_eos": True, **kw})


async def _run(engine: PeftEngine, prompt: list[int], params, handle) -> tuple[list[int], str, list]:
    tokens, text, deltas = [], "", []
    async for output in engine.generate(prompt, params, handle, "req"):
        (out,) = output.outputs
        tokens += out.token_ids
        text += out.text
        deltas.append(out)
    return tokens, text, deltas


def _base_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, eos_token_id=[2**31 - 1], pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_equal_peft_generate_for_every_method_and_a_full_fine_tune(tiny_model_dir, adapters):
    engine = PeftEngine(tiny_model_dir)
    prompt = engine.tokenizer("docker run nginx")["input_ids"]
    base = _base_greedy(tiny_model_dir, prompt, 10)

    async def main():
        # Two IA3 adapters share one PeftModel (load_adapter/set_adapter): both checked.
        names = [*METHODS, "ia3-b", "full"]
        for i, name in enumerate(names):
            await engine.add_adapter(AdapterHandle(name, i + 1, str(adapters[name]), "peft"))
        for name in [*names, "ia3"]:  # ia3 again after ia3-b switched away
            handle = AdapterHandle(name, names.index(name) + 1, str(adapters[name]), "peft")
            tokens, _, deltas = await _run(engine, prompt, _params(), handle)
            reference = peft_greedy(tiny_model_dir, adapters[name], prompt, 10, [2**31 - 1])
            assert tokens == reference, name
            assert tokens != base, f"{name}: the adapter did not change the output"
            assert deltas[-1].finish_reason == "length"
            assert all(len(d.token_ids) <= 1 for d in deltas)  # streamed token by token

    asyncio.run(main())
    engine.shutdown()


def test_stop_strings_max_tokens_and_refusals(tiny_model_dir, adapters):
    engine = PeftEngine(tiny_model_dir)
    handle = AdapterHandle("pt", 1, str(adapters["prompt_tuning"]), "peft")
    prompt = engine.tokenizer("docker run nginx")["input_ids"]

    async def main():
        await engine.add_adapter(handle)
        tokens, text, _ = await _run(engine, prompt, _params(max_tokens=12), handle)
        assert len(tokens) == 12
        full = engine.tokenizer.decode(tokens, skip_special_tokens=True)
        assert text == full
        stop = full[len(full) // 2:len(full) // 2 + 2]
        assert stop.strip(), full
        _, stopped, deltas = await _run(engine, prompt, _params(max_tokens=12, stop=[stop]),
                                        handle)
        assert stopped == full[:full.index(stop)]
        assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", stop)
        for params, name in [(_params(logprobs=1), "logprobs"), (_params(n=2, temperature=1.0), "n"),
                             (_params(logit_bias={3: 5.0}), "logit_bias"),
                             (_params(presence_penalty=0.5), "presence_penalty")]:
            with pytest.raises(ValueError) as exc:
                await _run(engine, prompt, params, handle)
            assert exc.value.parameter == name
        await engine.remove_adapter(handle)
        with pytest.raises(RuntimeError, match="not loaded"):
            await _run(engine, prompt, _params(), handle)

    asyncio.run(main())
    engine.shutdown()


def _chat_prompt(tiny_model_dir: Path, content: str) -> list[int]:
    from transformers import AutoTokenizer

    from training.chat_format import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return encode_prompt(tokenizer, [{"role": "user", "content": content}], None)


def test_app_routes_peft_adapters_and_refuses_what_it_cannot_honour(
        server_factory, tiny_model_dir, adapters, tmp_path):
    server = server_factory()
    http = server.http
    for name in ("ia3", "prompt_tuning"):
        created = http.post("/v1/adapters", json={"name": name, "path": str(adapters[name])})
        assert created.status_code == 201, created.text
        assert (created.json()["method"], created.json()["engine"]) == (name, "peft")
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert cards["ia3"]["adapter"]["method"] == "ia3"
    assert cards["prompt_tuning"]["adapter"]["engine"] == "peft"

    prompt = _chat_prompt(tiny_model_dir, "list containers")
    for name in ("ia3", "prompt_tuning"):
        reply = server.sdk.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "list containers"}],
            max_tokens=8, temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True})
        reference = peft_greedy(tiny_model_dir, adapters[name], prompt, 8, [2**31 - 1])
        assert reply.model_extra["prompt_token_ids"] == prompt
        assert reply.choices[0].model_extra["token_ids"] == reference, name
        assert reply.usage.completion_tokens == 8
        streamed = server.sdk.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "list containers"}],
            max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True})
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == reply.choices[0].message.content
    metrics = http.get("/metrics").text
    assert 'tuneserve_completion_tokens_total{model="ia3"} 16.0' in metrics

    refusals = [({"logprobs": True}, "logprobs"), ({"n": 2}, "n"),
                ({"logit_bias": {"5": 3}}, "logit_bias"),
                ({"response_format": {"type": "json_object"}}, "response_format"),
                ({"presence_penalty": 0.5}, "presence_penalty")]
    for extra, param in refusals:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as exc:
                server.sdk.chat.completions.create(
                    model="ia3", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                    stream=stream, **extra)
            assert exc.value.body["param"] == param, (extra, exc.value.body)
            assert "transformers+PEFT" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        server.sdk.completions.create(model="prompt_tuning", prompt="docker", max_tokens=4,
                                      logprobs=2)
    assert exc.value.body["param"] == "logprobs"

    # A PEFT type neither engine serves is refused, naming the method.
    loha = tmp_path / "loha"
    shutil.copytree(adapters["ia3"], loha)
    config = json.loads((loha / "adapter_config.json").read_text())
    (loha / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    refused = http.post("/v1/adapters", json={"name": "loha", "path": str(loha)})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_adapter_method"
    assert "'loha'" in refused.json()["error"]["message"]

    deleted = http.delete("/v1/adapters/ia3")
    assert deleted.status_code == 200
    with pytest.raises(openai.NotFoundError):
        server.sdk.chat.completions.create(model="ia3", messages=[{"role": "user",
                                                                   "content": "hi"}])


def test_dora_answers_from_peft_cache_and_a_removed_adapter_leaves_none(
        tiny_model_dir, adapters, tmp_path):
    other = make_peft_adapter(tiny_model_dir, tmp_path / "dora-b", "dora", seed=1)
    engine = PeftEngine(tiny_model_dir)
    prompt = engine.tokenizer("docker ps -a")["input_ids"]
    one = AdapterHandle("dora", 1, str(adapters["dora"]), "peft")
    two = AdapterHandle("dora-b", 2, str(other), "peft")

    def cached() -> set[str]:  # PEFT's keys: "<what>-<adapter name>", names "adapter-<id>"
        model = engine._groups["LORA"].model
        return {"-".join(key.split("-")[-2:]) for m in model.modules()
                for key in getattr(m, "_dora_cache", {})}

    async def main():
        for handle in (one, two):
            await engine.add_adapter(handle)
        # Cached weights give PEFT's own (uncached) answer, per adapter, in any order.
        for handle, path in ((one, adapters["dora"]), (two, other), (one, adapters["dora"])):
            tokens, _, _ = await _run(engine, prompt, _params(), handle)
            assert tokens == peft_greedy(tiny_model_dir, path, prompt, 10, [2**31 - 1])
        assert cached() == {"adapter-1", "adapter-2"}
        await engine.remove_adapter(two)
        assert cached() == set()  # the removed adapter's weights are not kept
        tokens, _, _ = await _run(engine, prompt, _params(), one)
        assert tokens == peft_greedy(tiny_model_dir, adapters["dora"], prompt, 10, [2**31 - 1])
        assert cached() == {"adapter-1"}

    asyncio.run(main())
    engine.shutdown()
