"""Tools (function calling) on a model without native tool support.

The prompt format is training/tool_format.py's (the same text the model is trained on).
``tool_choice``:

- ``none``: tools are in the prompt; the reply is text, never parsed.
- ``required`` / a named function: the reply is constrained (vLLM structured outputs) to one
  call ``{"name","arguments"}``: a JSON schema ``anyOf`` over the allowed functions, each
  ``name`` a const and ``arguments`` that function's parameter schema. A call is guaranteed
  unless ``max_tokens`` cuts it short (then the text comes back with ``finish_reason:
  "length"``).
- ``auto`` (the default with tools): unconstrained; a reply that is entirely calls in the
  format (one JSON object per line naming a declared function) becomes ``tool_calls``, any
  other reply is text.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from service.errors import BadRequest
from service.openai_fields import check_schema
from training.tool_format import dumps, parse_tool_calls

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    """What a request's tools ask of generation and of the reply."""

    mode: str  # "none", "auto" or "forced" (required or named)
    names: set[str] = field(default_factory=set)
    schema: dict[str, Any] | None = None  # the constraint for "forced"

    @property
    def parses(self) -> bool:
        return self.mode in ("auto", "forced")


def call_schema(functions: list[Any]) -> dict[str, Any]:
    """One call of one of ``functions`` (FunctionDefinition models)."""
    options = [{
        "type": "object",
        "properties": {"name": {"const": f.name},
                       "arguments": f.parameters or EMPTY_PARAMETERS},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for f in functions]
    return options[0] if len(options) == 1 else {"anyOf": options}


def plan(tools: list[Any] | None, tool_choice: Any) -> ToolPlan:
    """The plan for ``tools``/``tool_choice``; 400 for a choice that names nothing."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        return ToolPlan("none")
    functions = [t.function for t in tools]
    for i, function in enumerate(functions):
        if function.parameters is not None:
            check_schema(function.parameters, f"tools.{i}.function.parameters")
    names = {f.name for f in functions}
    if len(names) != len(functions):
        raise BadRequest("tool function names must be unique", param="tools")
    choice = tool_choice or "auto"
    if choice in ("none", "auto"):
        return ToolPlan(choice, names)
    if choice != "required":
        wanted = choice.function.name
        if wanted not in names:
            raise BadRequest(f"tool_choice names {wanted!r}, which is not in tools",
                             param="tool_choice")
        functions = [f for f in functions if f.name == wanted]
    return ToolPlan("forced", names, call_schema(functions))


def openai_tool_calls(calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` entries (fresh ids; arguments as a JSON string)."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": name, "arguments": dumps(arguments)}}
            for name, arguments in calls]


def reply(text: str, finish_reason: str | None, tool_plan: ToolPlan) -> tuple[dict, str | None]:
    """The assistant ``message`` fields and finish reason for a finished reply."""
    calls = parse_tool_calls(text, tool_plan.names) if tool_plan.parses else None
    if calls is None:
        return {"content": text}, finish_reason
    return {"content": None, "tool_calls": openai_tool_calls(calls)}, "tool_calls"


class StreamedReply:
    """One choice's streamed reply under a tool plan: text streams as it comes unless it
    may be a tool call, which is held until the reply ends and then sent as OpenAI streams
    calls (a delta with ``index``, ``id``, ``type``, ``function.name`` and empty
    ``arguments``, then one with the ``arguments``)."""

    def __init__(self, tool_plan: ToolPlan) -> None:
        self.plan = tool_plan
        self.held = ""
        self.streaming_text = not tool_plan.parses

    def feed(self, text: str) -> str:
        """The text to send now for a new piece ``text``."""
        if self.streaming_text:
            return text
        self.held += text
        # In auto mode, a reply that cannot be a call (it does not open with "{") streams.
        stripped = self.held.lstrip()
        if self.plan.mode == "auto" and stripped and not stripped.startswith("{"):
            self.streaming_text, text, self.held = True, self.held, ""
            return text
        return ""

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        """The deltas that end the reply, and its finish reason."""
        if self.streaming_text or not self.held:
            return [], finish_reason
        message, finish_reason = reply(self.held, finish_reason, self.plan)
        if message.get("tool_calls") is None:
            return [{"content": self.held}], finish_reason
        deltas = []
        for index, call in enumerate(message["tool_calls"]):
            function = call["function"]
            deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": function["name"],
                                                        "arguments": ""}}]})
            deltas.append({"tool_calls": [{"index": index,
                                           "function": {"arguments": function["arguments"]}}]})
        return deltas, finish_reason
