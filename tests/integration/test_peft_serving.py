"""The transformers+PEFT serving path on the real Gemma base and a real server: an IA3
and a prompt-tuning adapter (made with PEFT, weights perturbed) registered through the
API and answered through ``/v1/chat/completions`` with the openai SDK, token-identical to
PEFT's own greedy ``generate``."""

from __future__ import annotations

import pytest

from tests.unit.service_peft import make_peft_adapter, peft_greedy

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "How do I list running docker containers?"}]


@pytest.mark.parametrize("method", ["ia3", "prompt_tuning"])
def test_peft_adapter_answers_token_identical_to_peft_generate(
        live_server, real_model_dir, tmp_path, method):
    from transformers import AutoTokenizer, GenerationConfig

    from training.chat_format import encode_prompt

    # Gemma scales its token embeddings by sqrt(hidden); virtual tokens skip that, so they
    # need a larger push to change the answer (0.5 left it identical to the base's).
    scale = 5.0 if method == "prompt_tuning" else 0.5
    adapter = make_peft_adapter(real_model_dir, tmp_path / method, method, scale=scale)
    name = f"peft-{method.replace('_', '-')}"
    record = live_server.register_adapter(adapter, name)
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

        tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
        prompt = encode_prompt(tokenizer, MESSAGES, None)
        assert reply.model_extra["prompt_token_ids"] == prompt
        # The server stops where vLLM would: the checkpoint's EOS ids and <end_of_turn>.
        configured = GenerationConfig.from_pretrained(real_model_dir).eos_token_id
        eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>"),
               *([configured] if isinstance(configured, int) else configured or [])}
        reference = peft_greedy(real_model_dir, adapter, prompt, 16, sorted(eos))
        tokens = reply.choices[0].model_extra["token_ids"]
        assert tokens == reference
        assert tokens != base.choices[0].model_extra["token_ids"]  # the adapter took effect
        assert reply.choices[0].message.content == tokenizer.decode(
            reference, skip_special_tokens=True)
    finally:
        live_server.unregister_adapter(name)
