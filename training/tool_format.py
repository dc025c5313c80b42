"""The one text format of OpenAI tools (function calling) for a model whose chat template
has none (Gemma 3 pretrained): serving renders prompts with it, training renders rows with
it, and the server parses and constrains the model's tool calls to it.

- Tool definitions go into the system prompt (Gemma puts that into the first user turn):
  :data:`TOOLS_HEADER`, then one compact JSON line ``{"name","description","parameters"}``
  per function, then :data:`TOOLS_FOOTER`.
- An assistant tool call is the whole assistant turn: one compact JSON object
  ``{"name":"<function>","arguments":{...}}`` per line (any text content first, on its own
  line). This is exactly what the server's constrained decoding generates (one call).
- A ``tool`` message is a user turn of ``{"tool_result":{"name":"<function>","content":"..."}}``
  lines; consecutive tool messages (and a user message right after them) share one turn,
  since Gemma's template needs user and model turns to alternate.

:func:`render_tool_messages` maps an OpenAI conversation with tools to the plain
``{"role","content"}`` messages the chat template takes; it is the identity on a
conversation without tools, tool calls or tool messages.
"""

from __future__ import annotations

import json
from typing import Any

Messages = list[dict[str, Any]]

TOOLS_HEADER = "You can call these functions (JSON, one per line):"
TOOLS_FOOTER = (
    'To call a function, reply with only a JSON object {"name": <function name>, '
    '"arguments": <arguments object>}. Its result comes back as {"tool_result": ...}.'
)


def dumps(value: Any) -> str:
    """Compact JSON, as the constrained decoder writes it (no optional whitespace)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(content: Any) -> str:
    """A message's text: a string, or the concatenated ``text`` parts of a part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or part.get("text") is None:
            raise ValueError(f"content parts of type {part.get('type')!r} are not supported")
        parts.append(part["text"])
    return "".join(parts)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"] if "function" in tool else tool
    rendered = {"name": function["name"]}
    if function.get("description"):
        rendered["description"] = function["description"]
    rendered["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
    return rendered


def render_tools(tools: list[dict[str, Any]]) -> str:
    """The system-prompt block declaring ``tools`` (OpenAI ``{"type":"function",...}``)."""
    lines = [TOOLS_HEADER, *(dumps(_function(t)) for t in tools), TOOLS_FOOTER]
    return "\n".join(lines)


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One tool call as the model writes it."""
    return dumps({"name": name, "arguments": arguments})


def _arguments(raw: Any) -> dict[str, Any]:
    """OpenAI sends arguments as a JSON string; rows may hold the object itself."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return value


def render_tool_messages(messages: Messages, tools: list[dict[str, Any]] | None = None
                         ) -> Messages:
    """``messages`` (OpenAI roles incl. ``tool``, assistant ``tool_calls``) and ``tools`` as
    plain system/user/assistant messages with string content. Raises ValueError for a
    malformed tool call or an orphan tool message."""
    if not tools and not any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        return messages
    out: Messages = []
    names: dict[str, str] = {}  # tool_call_id -> function name, to label results
    if tools:
        block = render_tools(tools)
        if messages and messages[0].get("role") in ("system", "developer"):
            out.append({"role": "system", "content": f"{_text(messages[0]['content'])}\n\n{block}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    previous_was_tool = False
    for message in messages:
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in names:
                raise ValueError(f"tool message answers unknown tool_call_id {call_id!r}")
            line = dumps({"tool_result": {"name": names[call_id],
                                          "content": _text(message.get("content"))}})
            if previous_was_tool:
                out[-1]["content"] += "\n" + line
            else:
                out.append({"role": "user", "content": line})
            previous_was_tool = True
            continue
        if role == "user" and previous_was_tool:
            out[-1]["content"] += "\n\n" + _text(message.get("content"))
            previous_was_tool = False
            continue
        previous_was_tool = False
        calls = message.get("tool_calls") or []
        if role != "assistant" or not calls:
            out.append({**{k: v for k, v in message.items() if k in ("role", "content")},
                        "content": _text(message.get("content"))})
            continue
        lines = [_text(message.get("content"))] if message.get("content") else []
        for call in calls:
            function = call["function"]
            names[call.get("id", "")] = function["name"]
            lines.append(render_tool_call(function["name"], _arguments(function["arguments"])))
        out.append({"role": "assistant", "content": "\n".join(lines)})
    return out


def parse_tool_calls(text: str, tool_names: set[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """The calls in a model reply written in this format (one JSON object per line), or
    None when the reply is not entirely tool calls of functions in ``tool_names``."""
    calls = []
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return None
        if (not isinstance(value, dict) or set(value) != {"name", "arguments"}
                or value["name"] not in tool_names or not isinstance(value["arguments"], dict)):
            return None
        calls.append((value["name"], value["arguments"]))
    return calls or None
