"""Turn vLLM per-token ``Logprob`` dicts into the OpenAI chat and legacy-completion shapes."""

from __future__ import annotations

from typing import Any


def _token_text(token_id: int, entry: Any, tokenizer: Any) -> str:
    text = getattr(entry, "decoded_token", None)
    return text if text is not None else tokenizer.decode([token_id])


def _top(step: dict[int, Any], top_n: int, tokenizer: Any) -> list[tuple[str, float]]:
    ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:top_n]
    return [(_token_text(tid, lp, tokenizer), float(lp.logprob)) for tid, lp in ranked]


def chat_logprobs(
    token_ids: list[int], steps: list[dict[int, Any]], top_n: int, tokenizer: Any
) -> list[dict[str, Any]]:
    """``choices[i].logprobs.content`` entries for the generated tokens."""
    content = []
    for token_id, step in zip(token_ids, steps, strict=False):
        chosen = step.get(token_id)
        token = _token_text(token_id, chosen, tokenizer)
        content.append({
            "token": token,
            "logprob": max(float(chosen.logprob), -9999.0) if chosen else -9999.0,
            "bytes": list(token.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": max(lp, -9999.0), "bytes": list(t.encode("utf-8"))}
                for t, lp in _top(step, top_n, tokenizer)
            ],
        })
    return content


def completion_logprobs(
    token_ids: list[int],
    steps: list[dict[int, Any] | None],
    top_n: int,
    tokenizer: Any,
    offset: int = 0,
) -> dict[str, list[Any]]:
    """The legacy ``logprobs`` object; ``steps[i]`` None means "no logprob" (the first
    prompt token). ``offset`` is the text offset of the first token."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, step in zip(token_ids, steps, strict=False):
        chosen = step.get(token_id) if step else None
        token = _token_text(token_id, chosen, tokenizer)
        tokens.append(token)
        token_logprobs.append(float(chosen.logprob) if chosen else None)
        top_logprobs.append(dict(_top(step, top_n, tokenizer)) if step and top_n else None)
        text_offset.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }
