"""Run greedy generation with vLLM (CPU) in its own process; print JSON.

vLLM spawns engine workers, so it must run under ``if __name__ == "__main__"`` in a
process of its own rather than inside pytest.
usage: python vllm_greedy.py MODEL_DIR PROMPT_TEXT MAX_TOKENS
"""

import json
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    model_dir, prompt_text, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, seed=0)
    tokenizer = llm.get_tokenizer()
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": prompt_ids}], params)[0]
    chat = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    print("RESULT " + json.dumps({
        "prompt_ids": list(out.prompt_token_ids),
        "output_ids": list(out.outputs[0].token_ids),
        "vllm_tokenized_ids": prompt_ids,
        "vllm_chat_text": chat,
    }))
