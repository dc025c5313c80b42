"""The one place a conversation becomes model text and token ids.

Training, serving and evaluation all call these, so a prompt is formatted exactly the
same way everywhere (the base model's chat template, with ``<bos>`` exactly once).
Internal row shape: an OpenAI ``messages`` list of ``{"role", "content"}`` dicts; with
tools (``tools``, assistant ``tool_calls``, ``tool`` messages) rendered by
:mod:`training.tool_format` first.
"""

from __future__ import annotations

from typing import Any

from training.tool_format import render_tool_messages

Messages = list[dict[str, Any]]


def render_prompt(tokenizer, messages: Messages, *, add_generation_prompt: bool = True,
                  tools: list[dict[str, Any]] | None = None) -> str:
    """Chat-template text for ``messages`` (begins with ``<bos>``; ends with the model-turn
    header when ``add_generation_prompt``). Tokenize it with ``add_special_tokens=False``."""
    messages = render_tool_messages(messages, tools)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_prompt(tokenizer, messages: Messages, tools: list[dict[str, Any]] | None = None
                  ) -> list[int]:
    """Token ids of the prompt for the next assistant turn (``<bos>`` first, once)."""
    text = render_prompt(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_for_training(tokenizer, messages: Messages,
                        tools: list[dict[str, Any]] | None = None) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` for a conversation whose last turn is the
    assistant's answer: the prompt is everything before it, the completion is the answer
    plus the end-of-turn marker (so the model learns to stop)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    prompt_ids = encode_prompt(tokenizer, messages[:-1], tools)
    full_text = render_prompt(tokenizer, messages, add_generation_prompt=False, tools=tools)
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("chat template does not extend the prompt with the answer")
    # The template adds a newline after <end_of_turn>; the model should stop at the marker.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if end_of_turn in full_ids[len(prompt_ids) :]:
        cut = len(prompt_ids) + full_ids[len(prompt_ids) :].index(end_of_turn) + 1
        full_ids = full_ids[:cut]
    completion_mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
    return {"input_ids": full_ids, "completion_mask": completion_mask}
