"""``POST /v1/responses`` – thin route; the logic is in serving.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.cancellation import unless_disconnected
from service.errors import ErrorResponse, ServiceError, error_body
from service.rate_limits import RateLimitedUser
from service.requests_metrics import counted
from service.responses.protocol import ResponseCreateRequest

router = APIRouter(tags=["responses"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)}


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Responses streams name each event (``event:`` line) and end without ``[DONE]``;
    an error mid-stream is an ``error`` event, as OpenAI sends it."""
    try:
        async for item in events:
            yield f"event: {item['type']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"
    except ServiceError as exc:
        error = {"type": "error", **error_body(exc)["error"]}
        yield f"event: error\ndata: {json.dumps(error)}\n\n"


@router.post("/v1/responses", responses=ERRORS)
async def create_response(body: ResponseCreateRequest, request: Request, _: RateLimitedUser) -> Response:
    serving = request.app.state.responses_serving
    result = await unless_disconnected(
        request, counted(body.model, "responses", lambda: serving.create(body), request))
    if result is None:
        return Response(status_code=499)
    if body.stream:
        return StreamingResponse(_sse(result), media_type="text/event-stream")
    return JSONResponse(result)
