"""The transformers+PEFT serving path on the real Gemma base and a real server: an IA3
and a prompt-tuning adapter (made with PEFT, weights perturbed) and a full fine-tune
(trained here, a few steps) registered through the API and answered through
``/v1/chat/completions`` with the openai SDK, token-identical to PEFT's (for the full
fine-tune, transformers') own greedy ``generate`` on what was saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.service_peft import make_peft_adapter, peft_greedy

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "How do I list running docker containers?"}]
# What the full fine-tune learns to answer to MESSAGES (the base answers in prose).
TRAINED_ANSWER = "docker container ls --filter status=running"


def served_like_reference(live_server, model_dir: Path, path: Path, name: str,
                          method: str) -> str:
    """Register ``path`` as ``name``, answer MESSAGES through chat/completions (greedy) and
    check it is the reference's tokens, on the PEFT engine, unlike the base; the reply."""
    from transformers import AutoTokenizer, GenerationConfig

    from training.chat_format import encode_prompt

    record = live_server.register_adapter(path, name)
    try:
        assert (record["method"], record["engine"]) == (method, "peft")
        card = live_server.openai().models.retrieve(name)
        assert card.model_extra["adapter"]["method"] == method

        client = live_server.openai()
        reply = client.chat.completions.create(
            model=name, messages=MESSAGES, max_tokens=16, temperature=0,
            extra_body={"return_token_ids": True})
        base = client.chat.completions.create(
            model=live_server.model_id, messages=MESSAGES, max_tokens=16, temperature=0,
            extra_body={"return_token_ids": True})

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompt = encode_prompt(tokenizer, MESSAGES, None)
        assert reply.model_extra["prompt_token_ids"] == prompt
        # The server stops where vLLM would: the checkpoint's EOS ids and <end_of_turn>.
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
        eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>"),
               *([configured] if isinstance(configured, int) else configured or [])}
        reference = peft_greedy(model_dir, path, prompt, 16, sorted(eos))
        tokens = reply.choices[0].model_extra["token_ids"]
        assert tokens == reference
        assert tokens != base.choices[0].model_extra["token_ids"]  # the weights took effect
        content = reply.choices[0].message.content
        assert content == tokenizer.decode(reference, skip_special_tokens=True)
        return content
    finally:
        live_server.unregister_adapter(name)


@pytest.mark.parametrize("method", ["ia3", "prompt_tuning"])
def test_peft_adapter_answers_token_identical_to_peft_generate(
        live_server, real_model_dir, tmp_path, method):
    # Gemma scales its token embeddings by sqrt(hidden); virtual tokens skip that, so they
    # need a larger push to change the answer (0.5 left it identical to the base's).
    scale = 5.0 if method == "prompt_tuning" else 0.5
    adapter = make_peft_adapter(real_model_dir, tmp_path / method, method, scale=scale)
    served_like_reference(live_server, Path(real_model_dir), adapter,
                          f"peft-{method.replace('_', '-')}", method)


@pytest.fixture(scope="module")
def full_finetune(real_model_dir, tmp_path_factory) -> Path:
    """Real Gemma fully fine-tuned (every weight, ``adapter: full``) for a few steps on one
    question and its answer, through tuneserve's trainer."""
    from training.config import config_from_dict
    from training.sft import train

    work = tmp_path_factory.mktemp("full-ft")
    rows = [{"messages": [*MESSAGES, {"role": "assistant", "content": TRAINED_ANSWER}]}] * 4
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config_from_dict({
        "base_model": str(real_model_dir), "name": "full-ft", "output_dir": str(work),
        "datasets": [{"path": str(data)}], "adapter": "full", "max_steps": 4,
        "micro_batch_size": 4, "learning_rate": 5e-5, "lr_scheduler": "constant",
        "sequence_len": 64, "logging_steps": 1,
    })
    return train(config, progress_bar=False)


def test_full_finetune_answers_token_identical_to_transformers_generate(
        live_server, real_model_dir, full_finetune):
    from training.manifest import read_manifest

    assert read_manifest(full_finetune)["method"] == "full"
    content = served_like_reference(live_server, Path(real_model_dir), full_finetune,
                                    "full-ft", "full")
    assert content.startswith(TRAINED_ANSWER)  # what it was trained to answer
