"""The prepared Gemma checkpoint is the real pretrained model, and transformers and vLLM
agree on it (same prompt ids, <bos> first, same greedy continuation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.chat_format import encode_prompt, render_prompt

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget. After a long debate, "
    "the members agreed to spend more money on public schools and to repair several roads "
    "that had been damaged during the winter. The mayor said she was pleased with the result."
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about the sea."},
]
GREEDY_TOKENS = 24


def _perplexity(model_dir: Path, text: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    return float(torch.exp(loss))


def test_prepared_model_is_pretrained_not_random(real_model_dir: Path, tiny_model_dir: Path):
    real = _perplexity(real_model_dir, PARAGRAPH)
    tiny = _perplexity(tiny_model_dir, PARAGRAPH)
    # A random model is near-uniform over its vocabulary (ppl in the hundreds); the
    # pretrained 270M model reads plain English easily.
    assert real < 40, real
    assert tiny > 10 * real, (real, tiny)


def test_prepare_is_idempotent(real_model_dir: Path):
    result = subprocess.run(
        [sys.executable, "-m", "tuneserve.cli", "models", "prepare", "gemma-3-270m"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "already prepared" in result.stdout and "nothing to do" in result.stdout


def test_transformers_and_vllm_agree(real_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    prompt_text = render_prompt(tokenizer, MESSAGES)
    hf_ids = encode_prompt(tokenizer, MESSAGES)
    assert hf_ids[0] == tokenizer.bos_token_id and hf_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer("plain text")["input_ids"][0] == tokenizer.bos_token_id

    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([hf_ids]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
            do_sample=False,
        )
    hf_continuation = out[0, len(hf_ids):].tolist()

    script = Path(__file__).with_name("vllm_greedy.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(real_model_dir), prompt_text, str(GREEDY_TOKENS)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    vllm = json.loads(lines[-1][len("RESULT "):])

    assert vllm["vllm_tokenized_ids"] == hf_ids
    assert vllm["prompt_ids"] == hf_ids
    assert vllm["vllm_chat_text"].startswith("<bos><start_of_turn>user\n")
    assert len(hf_continuation) >= 16
    assert vllm["output_ids"][:16] == hf_continuation[:16], (
        tokenizer.decode(vllm["output_ids"]), tokenizer.decode(hf_continuation)
    )
