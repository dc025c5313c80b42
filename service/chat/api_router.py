"""``POST /v1/chat/completions`` – thin route; the logic is in serving.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.cancellation import unless_disconnected
from service.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from service.errors import ErrorResponse
from service.rate_limits import RateLimitedUser
from service.requests_metrics import counted
from service.sse import sse_stream

router = APIRouter(tags=["chat"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)}


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, _: RateLimitedUser
) -> Response:
    serving = request.app.state.chat_serving
    # A client that leaves before a non-streamed answer is ready cancels (aborts) it.
    result = await unless_disconnected(
        request, counted(body.model, "chat", lambda: serving.create(body), request)
    )
    if result is None:
        return Response(status_code=499)
    if body.stream:
        return StreamingResponse(sse_stream(result), media_type="text/event-stream")
    return JSONResponse(result)
