"""Dataset formats: one record of any supported format becomes one training row.

Row shapes (what the rest of training sees):

- ``{"messages": [...]}``: an OpenAI chat; assistant turns may carry ``weight`` (0 or 1).
  Every assistant turn whose weight is not 0 is trained (OpenAI's rule).
- ``{"text": "..."}``: raw text for continued pretraining (every token trained).
- ``{"segments": [{"text": "...", "label": bool}, ...]}``: Axolotl's template-free
  ``input_output`` (only segments with ``label: true`` trained).
- ``{"prompt": [...], "chosen": [one assistant message], "rejected": [one]}``: a preference
  pair for DPO/ORPO (``rl``), TRL's conversational preference form.

Formats (``type``) and where they come from:

- ``chat`` / ``chat_csv``: OpenAI chat JSONL (one record per CSV cell for ``chat_csv``).
- ``chat_template``: Axolotl's, a message list under ``field_messages`` with keys renamed by
  ``message_property_mappings`` and role values mapped by ``roles``.
- ``sharegpt``: ``conversations`` of ``from``/``value`` (human/gpt/system), optional
  ``system``: ShareGPT and LLaMA-Factory's ShareGPT variant.
- ``alpaca``: ``instruction``/``input``/``output`` plus LLaMA-Factory's ``system`` and
  ``history`` (earlier ``[user, assistant]`` pairs, trained like any assistant turn).
- ``prompt_completion``: ``prompt``/``completion``, strings or message lists (TRL's).
- ``completion``: Axolotl's raw text (``text``, or the column named by ``field``).
- ``input_output``: Axolotl's ``segments``.
- ``preference``: TRL's ``prompt``/``chosen``/``rejected`` (strings or message lists).
- ``openai_dpo``: OpenAI's DPO rows, ``input`` (``{"messages": [...]}``) /
  ``preferred_output`` / ``non_preferred_output`` (each a one-assistant-message list).

A key this module does not understand is an error naming it (``ignore_fields`` in the
dataset spec lists columns to leave out on purpose); nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# The dataset types a config may name (training.config.DatasetSpec.type).
DatasetType = Literal[
    "chat",
    "chat_template",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "completion",
    "input_output",
    "chat_csv",
    "hf_datasets",
    "preference",
    "openai_dpo",
]
FORMATS: tuple[str, ...] = get_args(DatasetType)
# Formats of preference pairs (DPO/ORPO rows), the only ones `rl` trains on.
PREFERENCE_FORMATS = ("preference", "openai_dpo")
ROLES = ("system", "user", "assistant")
# ShareGPT/Axolotl/LLaMA-Factory role names -> ours (Axolotl's chat_template defaults).
DEFAULT_ROLE_MAP = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function_call": "tool",
    "observation": "tool",
    "function": "tool",
}
TOOL_REFUSAL = (
    "tool calls are trained from OpenAI chat rows only (a row's 'tools', assistant "
    "'tool_calls', 'tool' messages); convert this format's function messages to that"
)
MESSAGE_KEYS = ("role", "content", "weight")
# Keys of tool-bearing messages in OpenAI chat rows, by role.
TOOL_MESSAGE_KEYS = {"assistant": ("role", "content", "weight", "tool_calls"),
                     "tool": ("role", "content", "tool_call_id")}


@dataclass(frozen=True)
class FormatOptions:
    """A dataset spec's field mappings (see training.config.DatasetSpec)."""

    field_messages: str | None = None
    message_property_mappings: dict[str, str] = field(default_factory=dict)
    roles: dict[str, list[str]] = field(default_factory=dict)
    message_field_training: str | None = None
    text_field: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    ignore_fields: tuple[str, ...] = ()

    def role_map(self) -> dict[str, str]:
        if not self.roles:
            return DEFAULT_ROLE_MAP
        mapped = {src: ours for ours, sources in self.roles.items() for src in sources}
        return {**{r: r for r in ROLES}, **mapped}


def detect(record: Any) -> str | None:
    """The format a record's keys say it is in, or None."""
    if not isinstance(record, dict):
        return None
    for key, fmt in (
        ("preferred_output", "openai_dpo"),
        ("chosen", "preference"),
        ("messages", "chat"),
        ("conversations", "sharegpt"),
        ("instruction", "alpaca"),
        ("output", "alpaca"),
        ("prompt", "prompt_completion"),
        ("completion", "prompt_completion"),
        ("segments", "input_output"),
        ("text", "completion"),
    ):
        if key in record:
            return fmt
    return None


def to_row(record: Any, fmt: str, options: FormatOptions | None = None) -> dict:
    """One validated row from one record (ValueError with the reason otherwise)."""
    options = options or FormatOptions()
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {kind(record)}")
    record = _apply_columns(record, options)
    if fmt == "hf_datasets":
        fmt = detect(record) or "prompt_completion"
    if fmt == "completion":
        text_key = options.text_field or "text"
        _check_keys(record, {text_key}, options)
        text = record.get(text_key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"missing, empty or non-string {text_key!r}")
        return {"text": text}
    if fmt == "input_output":
        return {"segments": _segments(record, options)}
    if fmt in PREFERENCE_FORMATS:
        return _preference(record, fmt, options)
    messages = to_messages(record, fmt, options)
    tools = record.get("tools") if fmt in ("chat", "chat_csv") else None
    check_messages(messages, tools)
    return {"messages": messages, **({"tools": tools} if tools else {})}


def to_messages(record: dict, fmt: str, options: FormatOptions | None = None) -> list[dict]:
    """A messages list from a chat-like record (ValueError with a reason)."""
    options = options or FormatOptions()
    if fmt in ("chat", "chat_csv"):
        if "messages" not in record:
            raise ValueError("missing key 'messages'")
        if "functions" in record:
            raise ValueError("'functions' is OpenAI's deprecated form: use 'tools'")
        _check_keys(record, {"messages", "tools", "parallel_tool_calls"}, options)
        if record.get("parallel_tool_calls"):
            raise ValueError("parallel_tool_calls: true is not supported (the server makes at "
                             "most one call per assistant turn)")
        return _message_list(record, "messages", options, mapped=False)
    if fmt in ("chat_template", "sharegpt"):
        key = options.field_messages or ("conversations" if fmt == "sharegpt" else "messages")
        if key not in record:
            raise ValueError(f"missing key {key!r}")
        if "tools" in record:
            raise ValueError(TOOL_REFUSAL)
        _check_keys(record, {key, "system"}, options)
        messages = _message_list(record, key, options, mapped=True)
        if any(m.get("role") == "tool" for m in messages):
            raise ValueError(TOOL_REFUSAL)
        return _with_system_field(record, messages)
    if fmt == "alpaca":
        return _alpaca(record, options)
    if fmt == "prompt_completion":
        return _prompt_completion(record, options)
    raise ValueError(f"unknown format {fmt!r}")


def check_messages(messages: list, tools: list | None = None) -> None:
    """Raise ValueError with the first problem: bad shape, unknown role or key, empty
    content, a bad weight, turns out of order, or no trained assistant turn at the end.

    Tool-bearing conversations (``tools``, assistant ``tool_calls``, ``tool`` results) are
    checked as :mod:`training.tool_format` renders them, the way the server prompts."""
    if not messages:
        raise ValueError("no messages")
    if tools is not None or any(isinstance(m, dict) and (
            m.get("role") == "tool" or "tool_calls" in m) for m in messages):
        _check_tool_messages(messages, tools)
        return
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is {kind(msg)}, not an object")
        role = msg.get("role")
        if role is None:
            raise ValueError(f"message {i} has no 'role'")
        if role == "tool" or "tool_calls" in msg or "tool_call_id" in msg:
            raise ValueError(f"message {i}: {TOOL_REFUSAL}")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r} (use {', '.join(ROLES)})")
        unknown = sorted(set(msg) - set(MESSAGE_KEYS))
        if unknown:
            raise ValueError(
                f"message {i} ({role}) has unknown key(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(MESSAGE_KEYS)})"
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} ({role}) content must be a string")
        if not content.strip():
            raise ValueError(f"message {i} ({role}) has empty content")
        if "weight" in msg:
            if role != "assistant":
                raise ValueError(f"message {i} ({role}): weight is only allowed on assistant")
            if msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
                raise ValueError(f"message {i}: weight must be 0 or 1, got {msg['weight']!r}")
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in turns:
        raise ValueError("no assistant turn")
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError("turns must alternate user/assistant, starting with user")
    if turns[-1] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    if all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
        raise ValueError("every assistant turn has weight 0: nothing to train on")


def _check_tool_messages(messages: list, tools: list | None) -> None:
    from training.tool_format import render_tool_messages

    if tools is not None and (not isinstance(tools, list)
                              or not all(isinstance(t, dict) for t in tools)):
        raise ValueError("'tools' must be a list of tool objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is {kind(msg)}, not an object")
        role = msg.get("role")
        known = TOOL_MESSAGE_KEYS.get(role, MESSAGE_KEYS)
        unknown = sorted(set(msg) - set(known))
        if unknown:
            raise ValueError(f"message {i} ({role}) has unknown key(s) "
                             f"{', '.join(map(repr, unknown))} (known: {', '.join(known)})")
        if "weight" in msg and (msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool)):
            raise ValueError(f"message {i}: weight must be 0 or 1, got {msg['weight']!r}")
    if messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    if all(m.get("weight", 1) == 0 for m in messages if m.get("role") == "assistant"):
        raise ValueError("every assistant turn has weight 0: nothing to train on")
    # What the model sees: tool definitions in the system turn, calls as assistant text,
    # results as user turns. That must be a valid plain conversation.
    try:
        rendered = render_tool_messages([{k: v for k, v in m.items() if k != "weight"}
                                         for m in messages], tools)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed tool call or tool definition (missing {exc})") from None
    check_messages(rendered)


def kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


# --- per-format helpers ------------------------------------------------------------------


def _apply_columns(record: dict, options: FormatOptions) -> dict:
    """Rename the file's columns to the format's field names (``columns: {ours: theirs}``)."""
    if not options.columns:
        return record
    missing = [theirs for theirs in options.columns.values() if theirs not in record]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(map(repr, missing))} named in columns")
    renamed = {ours: record[theirs] for ours, theirs in options.columns.items()}
    rest = {k: v for k, v in record.items() if k not in options.columns.values()}
    return {**rest, **renamed}


def _check_keys(record: dict, known: set[str], options: FormatOptions) -> None:
    unknown = sorted(set(record) - known - set(options.ignore_fields))
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))} (known here: "
            f"{', '.join(sorted(known))}; list columns to leave out in ignore_fields)"
        )


def _message_list(record: dict, key: str, options: FormatOptions, *, mapped: bool) -> list[dict]:
    if key not in record:
        raise ValueError(f"missing key {key!r}")
    raw = record[key]
    if not isinstance(raw, list):
        raise ValueError(f"{key!r} must be a list, got {kind(raw)}")
    if not mapped:
        return raw
    props = {"role": "from", "content": "value"} if key == "conversations" else {}
    props.update(options.message_property_mappings)
    roles = options.role_map()
    training_key = options.message_field_training
    out = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is {kind(msg)}, not an object")
        source = {v: k for k, v in props.items()}  # their key -> ours
        converted: dict[str, Any] = {}
        for their_key, value in msg.items():
            if their_key == training_key:
                converted["weight"] = 1 if value else 0
                continue
            converted[source.get(their_key, their_key)] = value
        role = converted.get("role")
        if isinstance(role, str):
            if role not in roles:
                raise ValueError(
                    f"message {i} has unknown role {role!r} (map it with roles; known: "
                    f"{', '.join(sorted(roles))})"
                )
            converted["role"] = roles[role]
        if training_key and converted.get("role") != "assistant" and converted.get("weight"):
            raise ValueError(f"message {i}: only assistant turns can be trained")
        if converted.get("role") != "assistant":
            converted.pop("weight", None)
        out.append(converted)
    return out


def _with_system_field(record: dict, messages: list[dict]) -> list[dict]:
    system = record.get("system")
    if system is None or system == "":
        return messages
    if not isinstance(system, str):
        raise ValueError("'system' must be a string")
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        raise ValueError("the row has both a 'system' field and a system message")
    return [{"role": "system", "content": system}, *messages]


def _alpaca(record: dict, options: FormatOptions) -> list[dict]:
    _check_keys(record, {"instruction", "input", "output", "system", "history"}, options)
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"missing or non-string {key!r}")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("'input' must be a string")
    instruction = record["instruction"]
    user = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    messages: list[dict] = []
    for n, pair in enumerate(record.get("history") or []):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        ):
            raise ValueError(f"history item {n} must be a [user, assistant] pair of strings")
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": record["output"]},
    ]
    return _with_system_field(record, messages)


def _prompt_completion(record: dict, options: FormatOptions) -> list[dict]:
    """Plain strings, or TRL's conversational lists of messages."""
    _check_keys(record, {"prompt", "completion"}, options)
    if "prompt" not in record or "completion" not in record:
        raise ValueError("missing key 'prompt' or 'completion'")
    prompt, completion = record["prompt"], record["completion"]
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    comp_msgs = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else completion
    )
    if not isinstance(prompt_msgs, list) or not isinstance(comp_msgs, list):
        raise ValueError("'prompt' and 'completion' must be strings or message lists")
    # Only the completion is trained (TRL's prompt-completion rule).
    prompt_msgs = [
        {**m, "weight": 0} if isinstance(m, dict) and m.get("role") == "assistant" else m
        for m in prompt_msgs
    ]
    return prompt_msgs + comp_msgs


def _segments(record: dict, options: FormatOptions) -> list[dict]:
    _check_keys(record, {"segments"}, options)
    segments = record.get("segments")
    if not isinstance(segments, list) or not segments:
        raise ValueError("'segments' must be a non-empty list")
    out = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise ValueError(f"segment {i} is {kind(seg)}, not an object")
        unknown = sorted(set(seg) - {"text", "label"})
        if unknown:
            raise ValueError(f"segment {i} has unknown key(s) {', '.join(map(repr, unknown))}")
        if not isinstance(seg.get("text"), str):
            raise ValueError(f"segment {i} 'text' must be a string")
        label = seg.get("label", True)
        if not isinstance(label, bool):
            raise ValueError(f"segment {i} 'label' must be true or false")
        out.append({"text": seg["text"], "label": label})
    if not any(s["label"] and s["text"] for s in out):
        raise ValueError("no segment has label: true: nothing to train on")
    return out


def is_preference(row: dict) -> bool:
    """Whether a row is a preference pair (see the module docstring's row shapes)."""
    return "chosen" in row


def preference_conversations(row: dict) -> tuple[list[dict], list[dict]]:
    """A preference row as two chats: prompt + chosen, prompt + rejected."""
    return row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]


def _preference(record: dict, fmt: str, options: FormatOptions) -> dict:
    """A preference pair from TRL's or OpenAI's form (ValueError naming the problem)."""
    if fmt == "openai_dpo":
        keys = ("input", "preferred_output", "non_preferred_output")
        _check_keys(record, set(keys), options)
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
        source = record["input"]
        if not isinstance(source, dict) or "messages" not in source:
            raise ValueError("'input' must be an object with 'messages'")
        if source.get("tools") or source.get("parallel_tool_calls"):
            raise ValueError("input.tools / parallel_tool_calls are not supported in preference "
                             "rows (tool calls train from OpenAI chat rows)")
        unknown = sorted(set(source) - {"messages", "tools", "parallel_tool_calls"})
        if unknown:
            raise ValueError(f"input has unknown key(s) {', '.join(map(repr, unknown))}")
        prompt, chosen, rejected = (source["messages"], record["preferred_output"],
                                    record["non_preferred_output"])
        names = ("input.messages", "preferred_output", "non_preferred_output")
    else:
        keys = ("prompt", "chosen", "rejected")
        _check_keys(record, set(keys), options)
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
        prompt, chosen, rejected = (record[k] for k in keys)
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        chosen, rejected = (
            [{"role": "assistant", "content": x}] if isinstance(x, str) else x
            for x in (chosen, rejected)
        )
        names = keys
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{names[0]!r} must be a non-empty message list")
    for name, answer in zip(names[1:], (chosen, rejected), strict=True):
        if (not isinstance(answer, list) or len(answer) != 1 or not isinstance(answer[0], dict)
                or answer[0].get("role") != "assistant"):
            raise ValueError(f"{name!r} must be one assistant message")
        try:
            check_messages([*prompt, *answer])
        except ValueError as exc:
            raise ValueError(f"{names[0]} + {name}: {exc}") from None
        if "weight" in answer[0]:
            raise ValueError(f"{name!r}: weight has no meaning in a preference pair")
    if chosen[0]["content"] == rejected[0]["content"]:
        raise ValueError(f"{names[1]!r} and {names[2]!r} are the same answer: nothing to prefer")
    strip = [{k: v for k, v in m.items() if k != "weight"} for m in prompt]
    return {"prompt": strip, "chosen": chosen, "rejected": rejected}
