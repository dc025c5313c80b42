"""The serving app on the real Gemma base and real vLLM, through the official ``openai``
SDK: models, chat (stream and not), completions, logprobs, adapters vs a
transformers+PEFT reference, hot-loading during a stream, the watched folder."""

from __future__ import annotations

import copy
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import metrics_text
from training.chat_format import encode_prompt

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "List all running docker containers."}]
REFERENCE_TOKENS = 24


@pytest.fixture(scope="module")
def client(live_server):
    return live_server.openai()


@pytest.fixture(scope="module")
def served_test_adapter(live_server, gemma_test_adapter):
    live_server.register_adapter(gemma_test_adapter, "rand-lora")
    yield "rand-lora"
    live_server.unregister_adapter("rand-lora")


@pytest.fixture(scope="module")
def hf_reference(real_model_dir):
    """Greedy generation and prompt scoring with plain transformers (+ PEFT)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()

    class Reference:
        def __init__(self):
            self.tokenizer = tokenizer

        def greedy(self, adapter_dir: Path | None, prompt_ids: list[int], n: int) -> list[int]:
            model = base
            if adapter_dir is not None:
                model = PeftModel.from_pretrained(base, adapter_dir).eval()
            # No EOS at all (like vLLM's ignore_eos): no stopping and no logit masking.
            config = copy.deepcopy(base.generation_config)
            config.eos_token_id = None
            config.do_sample = False
            config.max_new_tokens = n
            config.pad_token_id = tokenizer.pad_token_id
            try:
                with torch.no_grad():
                    out = model.generate(torch.tensor([prompt_ids]), generation_config=config)
            finally:
                if adapter_dir is not None:
                    model.unload()
            return out[0, len(prompt_ids):].tolist()

        def prompt_logprobs(self, ids: list[int]) -> list[float]:
            with torch.no_grad():
                logits = base(torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            return [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]

    return Reference()


def test_models_list(client, live_server, served_test_adapter):
    models = {m.id: m for m in client.models.list().data}
    assert live_server.model_id in models
    adapter = models[served_test_adapter].model_dump()
    assert adapter["parent"] == live_server.model_id
    assert adapter["adapter"]["rank"] == 8


def test_chat_non_stream_and_stream_agree(client, live_server):
    kwargs = dict(model=live_server.model_id, messages=MESSAGES, max_tokens=12, temperature=0)
    response = client.chat.completions.create(**kwargs)
    text = response.choices[0].message.content
    assert text and response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_responses_answer_as_chat_does(client, live_server):
    """/v1/responses is the chat path in another envelope: same greedy text, streamed too."""
    chat = client.chat.completions.create(
        model=live_server.model_id, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "You answer with docker commands."},
                  *MESSAGES])
    kwargs = dict(model=live_server.model_id, instructions="You answer with docker commands.",
                  input=MESSAGES, max_output_tokens=12, temperature=0)
    response = client.responses.create(**kwargs)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert (response.status == "incomplete") == (chat.choices[0].finish_reason == "length")
    events = list(client.responses.create(**kwargs, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        response.output_text
    assert events[-1].response.output_text == response.output_text


def test_chat_n_seed_and_logprobs(client, live_server):
    response = client.chat.completions.create(
        model=live_server.model_id, messages=MESSAGES, max_tokens=6, n=2, temperature=1.0,
        seed=7, logprobs=True, top_logprobs=2)
    assert len(response.choices) == 2
    for choice in response.choices:
        content = choice.logprobs.content
        assert content and all(entry.logprob <= 0 for entry in content)
        assert all(len(entry.top_logprobs) == 2 for entry in content)
    again = client.chat.completions.create(
        model=live_server.model_id, messages=MESSAGES, max_tokens=6, n=2, temperature=1.0,
        seed=7)
    assert [c.message.content for c in again.choices] == \
        [c.message.content for c in response.choices]


def test_completions_stop_and_max_tokens(client, live_server):
    response = client.completions.create(model=live_server.model_id,
                                         prompt="The capital of France is", max_tokens=8,
                                         temperature=0)
    assert response.object == "text_completion" and response.choices[0].text
    assert response.usage.completion_tokens <= 8
    first_word = response.choices[0].text.split()[0]
    stopped = client.completions.create(model=live_server.model_id,
                                        prompt="The capital of France is", max_tokens=8,
                                        temperature=0, stop=[first_word])
    assert first_word not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"


def test_prompt_logprobs_match_transformers(client, live_server, hf_reference):
    """echo + logprobs + max_tokens=0 scores a prompt, as the evaluation side needs."""
    text = "docker run -d -p 8080:80 nginx"
    response = client.completions.create(model=live_server.model_id, prompt=text,
                                         max_tokens=0, echo=True, logprobs=0)
    choice = response.choices[0]
    assert choice.text == text
    served = choice.logprobs.token_logprobs
    ids = hf_reference.tokenizer(text)["input_ids"]
    assert served[0] is None and len(served) == len(ids)
    assert served[1:] == pytest.approx(hf_reference.prompt_logprobs(ids), abs=2e-3)


def _chat_ids(client, model: str, prompt_ids_len_check: list[int] | None = None) -> dict:
    response = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=REFERENCE_TOKENS, temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True})
    data = response.model_dump()
    return {"prompt": data["prompt_token_ids"], "ids": data["choices"][0]["token_ids"]}


def test_adapter_greedy_matches_peft_reference(client, live_server, served_test_adapter,
                                               gemma_test_adapter, hf_reference):
    base = _chat_ids(client, live_server.model_id)
    adapted = _chat_ids(client, served_test_adapter)
    assert base["prompt"] == encode_prompt(hf_reference.tokenizer, MESSAGES)
    assert adapted["ids"] != base["ids"], "the adapter must change the greedy output"
    reference = hf_reference.greedy(gemma_test_adapter, adapted["prompt"], REFERENCE_TOKENS)
    assert adapted["ids"][:16] == reference[:16]
    base_reference = hf_reference.greedy(None, base["prompt"], REFERENCE_TOKENS)
    assert base["ids"][:16] == base_reference[:16]


def test_trained_adapter_matches_peft_reference(client, live_server, hf_reference,
                                                docker_adapter_dir):
    adapter_dir = docker_adapter_dir
    live_server.register_adapter(adapter_dir, "docker-trained")
    try:
        adapted = _chat_ids(client, "docker-trained")
        base = _chat_ids(client, live_server.model_id)
        assert adapted["ids"] != base["ids"]
        reference = hf_reference.greedy(Path(adapter_dir), adapted["prompt"], REFERENCE_TOKENS)
        # The trained adapter answers in a few tokens ("docker ps ...") and ends its turn.
        # Compare the whole answer up to <end_of_turn>; past it the two runtimes treat the
        # stop token differently (transformers with EOS disabled repeats <end_of_turn>).
        # The 16-token agreement on a long answer is test_adapter_greedy_matches_peft_reference.
        end_of_turn = hf_reference.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert end_of_turn in reference, hf_reference.tokenizer.decode(reference)
        answer = reference[: reference.index(end_of_turn)]
        assert len(answer) >= 2, hf_reference.tokenizer.decode(reference)
        assert adapted["ids"][: len(answer)] == answer
        # vLLM may stop at <end_of_turn> (a generation-config stop id) despite ignore_eos.
        assert adapted["ids"][len(answer) : len(answer) + 1] in ([], [end_of_turn])
    finally:
        live_server.unregister_adapter("docker-trained")


def test_hot_load_while_base_streams(client, live_server, gemma_test_adapter):
    kwargs = dict(model=live_server.model_id, messages=MESSAGES, max_tokens=48, temperature=0,
                  extra_body={"ignore_eos": True})
    expected = client.chat.completions.create(**kwargs).choices[0].message.content
    first_chunk = threading.Event()
    result: dict = {}

    def stream_base():
        parts, finish = [], None
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
                if chunk.choices[0].delta.content:
                    first_chunk.set()
        result["text"], result["finish"] = "".join(parts), finish

    thread = threading.Thread(target=stream_base)
    thread.start()
    assert first_chunk.wait(120)
    live_server.register_adapter(gemma_test_adapter, "hot-lora")
    try:
        adapted = client.chat.completions.create(model="hot-lora", messages=MESSAGES,
                                                 max_tokens=8, temperature=0)
        assert adapted.choices[0].message.content is not None
        thread.join(180)
        assert not thread.is_alive()
        assert result["finish"] == "length"
        assert result["text"] == expected  # loading did not disturb the running stream
    finally:
        live_server.unregister_adapter("hot-lora")


def test_watched_folder_serves_new_adapter(client, live_server, gemma_test_adapter):
    # As the training side does: write a hidden temp folder, then rename it into place.
    staging = live_server.adapters_dir / ".incoming-watched-lora"
    shutil.copytree(gemma_test_adapter, staging)
    staging.rename(live_server.adapters_dir / "watched-lora")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "watched-lora" in {m.id for m in client.models.list().data}:
            break
        time.sleep(0.25)
    else:
        pytest.fail("the watched adapter was not served within 15 s")
    response = client.chat.completions.create(model="watched-lora", messages=MESSAGES,
                                              max_tokens=4, temperature=0)
    assert response.model == "watched-lora"
    shutil.rmtree(live_server.adapters_dir / "watched-lora")
    deadline = time.monotonic() + 15
    while "watched-lora" in {m.id for m in client.models.list().data}:
        assert time.monotonic() < deadline, "removed folder still served"
        time.sleep(0.25)


def test_metrics_per_model_and_engine(live_server, client, served_test_adapter):
    client.chat.completions.create(model=served_test_adapter, messages=MESSAGES, max_tokens=2)
    text = metrics_text(live_server.base_url)
    assert f'tuneserve_requests_total{{endpoint="chat",model="{served_test_adapter}",status="200"}}' in text
    assert f'tuneserve_prompt_tokens_total{{model="{served_test_adapter}"}}' in text
    assert "tuneserve_adapters_loaded" in text
    assert 'tuneserve_adapter_operations_total{operation="load",result="ok"}' in text
    assert "vllm:num_requests_running" in text  # vLLM's own engine metrics
