"""Responses logic: a Responses request is a chat completion with another envelope.

The request becomes a ``ChatCompletionRequest`` (``instructions`` is the system turn) and
runs through :class:`service.chat.serving.ChatServing`, so the chat template, adapters,
admission, metrics and errors are the chat endpoint's own. Only the response shape and
the streamed events (``response.created`` … ``response.completed``) are built here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from service.chat.protocol import ChatCompletionRequest
from service.chat.serving import ChatServing
from service.ids import new_id
from service.responses.protocol import ResponseCreateRequest


def chat_request(request: ResponseCreateRequest) -> ChatCompletionRequest:
    messages: list[dict[str, str]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        messages += [{"role": m.role, "content": m.text()} for m in request.input]
    return ChatCompletionRequest(
        model=request.model, messages=messages, max_completion_tokens=request.max_output_tokens,
        temperature=request.temperature, top_p=request.top_p, stream=request.stream,
        stream_options={"include_usage": True} if request.stream else None,
    )


class ResponsesServing:
    def __init__(self, chat: ChatServing) -> None:
        self.chat = chat

    async def create(self, request: ResponseCreateRequest) -> dict | AsyncIterator[dict]:
        result = await self.chat.create(chat_request(request))
        response = _Response(request)
        if request.stream:
            return response.events(result)
        choice = result["choices"][0]
        return response.finished(choice["message"]["content"], choice["finish_reason"],
                                 result["usage"])


class _Response:
    """One response object as it goes from in progress to finished."""

    def __init__(self, request: ResponseCreateRequest) -> None:
        self.request = request
        self.id = new_id("resp")
        self.message_id = new_id("msg")
        self.created_at = int(time.time())

    def body(self, status: str, output: list[dict], usage: dict | None = None,
             finish_reason: str | None = None) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "model": r.model, "output": output,
            "instructions": r.instructions, "max_output_tokens": r.max_output_tokens,
            "temperature": r.temperature, "top_p": r.top_p, "metadata": r.metadata or {},
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
            "text": {"format": {"type": "text"}}, "error": None, "store": False,
            "incomplete_details": ({"reason": "max_output_tokens"}
                                   if finish_reason == "length" else None),
            "usage": _usage(usage) if usage else None,
            **({"completed_at": int(time.time())} if status != "in_progress" else {}),
        }

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self.message_id, "status": status,
                "role": "assistant",
                "content": [_text_part(text)] if status != "in_progress" or text else []}

    def finished(self, text: str, finish_reason: str | None, usage: dict) -> dict[str, Any]:
        status = "incomplete" if finish_reason == "length" else "completed"
        return self.body(status, [self.message(text, status)], usage, finish_reason)

    async def events(self, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """The Responses stream: lifecycle events around ``response.output_text.delta``s."""
        sequence = iter(range(1 << 62))
        where = {"item_id": self.message_id, "output_index": 0}

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            return {"type": kind, "sequence_number": next(sequence), **fields}

        started = self.body("in_progress", [])
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        yield event("response.output_item.added", output_index=0,
                    item=self.message("", "in_progress"))
        yield event("response.content_part.added", **where, content_index=0,
                    part=_text_part(""))
        text, finish_reason, usage = "", None, None
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                delta = choice["delta"].get("content")
                if delta:
                    text += delta
                    yield event("response.output_text.delta", **where, content_index=0,
                                delta=delta, logprobs=[])
                finish_reason = choice["finish_reason"] or finish_reason
        yield event("response.output_text.done", **where, content_index=0, text=text,
                    logprobs=[])
        yield event("response.content_part.done", **where, content_index=0,
                    part=_text_part(text))
        final = self.finished(text, finish_reason, usage or {})
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(kind, response=final)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: dict) -> dict[str, Any]:
    return {"input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}
