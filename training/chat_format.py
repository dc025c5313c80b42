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


def encode_for_training(
    tokenizer, messages: Messages, tools: list[dict[str, Any]] | None = None, *,
    eot_tokens: tuple[str, ...] = ("<end_of_turn>",),
) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` for a conversation whose last turn is the
    assistant's answer, with only that answer in the loss (the evaluation's reference NLL).
    Training uses :func:`encode_conversation`, which trains every assistant turn."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    only_last = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in messages[:-1]] + [
        {**messages[-1], "weight": 1}
    ]
    return encode_conversation(tokenizer, only_last, tools, eot_tokens=eot_tokens)


def encode_conversation(
    tokenizer, messages: Messages, tools: list[dict[str, Any]] | None = None, *,
    eot_tokens: tuple[str, ...] = ("<end_of_turn>",),
) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` of a conversation ending with an assistant turn.

    Every assistant turn whose ``weight`` is not 0 is in the loss (OpenAI's rule for
    multi-turn fine-tuning data): its text plus the end-of-turn marker, so the model learns
    to stop. The ids end at the last answer's end-of-turn token (the template's trailing
    newline is never trained). ``weight`` keys are dropped before the chat template sees them.
    Tool definitions, calls and results render as :mod:`training.tool_format` says.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    full_text = render_prompt(tokenizer, plain, add_generation_prompt=False, tools=tools)
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in eot_tokens}
    mask = [0] * len(full_ids)
    end = len(full_ids)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(encode_prompt(tokenizer, plain[:i], tools))
        turn_ids = tokenizer(
            render_prompt(tokenizer, plain[: i + 1], add_generation_prompt=False, tools=tools),
            add_special_tokens=False,
        )["input_ids"]
        if full_ids[:start] != turn_ids[:start] or turn_ids != full_ids[: len(turn_ids)]:
            raise ValueError("chat template does not extend the prompt with the answer")
        # The answer ends at its first end-of-turn token (inclusive).
        stop = next(
            (j + 1 for j in range(start, len(turn_ids)) if turn_ids[j] in stop_ids), len(turn_ids)
        )
        if msg.get("weight", 1) != 0:
            mask[start:stop] = [1] * (stop - start)
        end = stop
    return {"input_ids": full_ids[:end], "completion_mask": mask[:end]}


def encode_row(
    tokenizer, row: dict[str, Any], *, eot_tokens: tuple[str, ...] = ("<end_of_turn>",)
) -> dict[str, list[int]]:
    """``input_ids`` + ``completion_mask`` of any training row shape (training.formats):
    a conversation (chat template), raw ``text`` (``<bos>`` text ``<eos>``, all trained) or
    ``segments`` (``<bos>`` then each segment, trained where ``label`` is true)."""
    if "messages" in row:
        return encode_conversation(tokenizer, row["messages"], row.get("tools"),
                                   eot_tokens=eot_tokens)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if "text" in row:
        ids = bos + tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
        return {"input_ids": ids, "completion_mask": [1] * len(ids)}
    ids, mask = list(bos), [0] * len(bos)
    for seg in row["segments"]:
        seg_ids = tokenizer(seg["text"], add_special_tokens=False)["input_ids"]
        ids += seg_ids
        mask += [1 if seg["label"] else 0] * len(seg_ids)
    return {"input_ids": ids, "completion_mask": mask}
