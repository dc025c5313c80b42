"""Request bodies bounded before they are read (a pure ASGI middleware).

A body over its route's cap is refused from ``Content-Length`` before a byte of it is
read, or, when it is streamed without a length (chunked), as soon as the bytes received
pass the cap: the multipart parser never spools more than the cap to memory or disk.

- inference (chat, completions, responses): prompts are tokenized on the event loop, so
  the body needs a ``Content-Length`` (411 otherwise) of at most ``inference_cap``;
- uploads (``/v1/files``, ``/v1/adapters``): at most the upload cap plus
  ``MULTIPART_SLACK`` for the form's own framing and fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError, create_error_response

MULTIPART_SLACK = 1 << 20
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
UPLOAD_PATHS = frozenset({"/v1/files", "/v1/adapters"})


def _error(status: int, code: str, message: str) -> ServiceError:
    error = ServiceError(message, code=code)
    error.status_code = status
    return error


class BodyLimits:
    """``cap_for(path)``: (the largest body accepted, whether a length is required), or
    None for routes without a limit here."""

    def __init__(self, app: ASGIApp, cap_for: Callable[[str], tuple[int, bool] | None]) -> None:
        self.app = app
        self.cap_for = cap_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = None
        if scope["type"] == "http" and scope["method"] == "POST":
            limit = self.cap_for(scope["path"])
        if limit is None:
            return await self.app(scope, receive, send)
        cap, length_required = limit
        length = _header(scope, b"content-length")
        refusal = None
        if length is None and length_required:
            refusal = _error(411, "length_required",
                             "send the request body with a Content-Length header")
        elif length is not None and (not length.isdigit() or int(length) > cap):
            refusal = _error(413, "payload_too_large",
                             f"request body of {length} bytes is over the limit of {cap} bytes")
        if refusal is not None:
            return await create_error_response(refusal)(scope, receive, send)
        await self._bounded(scope, receive, send, cap)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Run the app, cutting its body off once more than ``cap`` bytes have come in (a
        body streamed without a length, or longer than it said).

        The app sees the cut as a client disconnect and stops reading; whatever it answers
        to that is replaced by the 413. (Raising from ``receive`` does not work: Starlette's
        middleware task groups wrap the exception, and FastAPI turns it into a 400.)
        """
        received = 0
        over = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            refusal = _error(413, "payload_too_large",
                             f"request body is over the limit of {cap} bytes")
            await create_error_response(refusal)(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
