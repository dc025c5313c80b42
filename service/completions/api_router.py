"""``POST /v1/completions`` – thin route; the logic is in serving.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.cancellation import unless_disconnected
from service.chat.api_router import ERRORS
from service.completions.protocol import CompletionRequest, CompletionResponse
from service.rate_limits import RateLimitedUser
from service.requests_metrics import counted
from service.sse import sse_stream

router = APIRouter(tags=["completions"])


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def create_completion(body: CompletionRequest, request: Request, _: RateLimitedUser) -> Response:
    serving = request.app.state.completion_serving
    result = await unless_disconnected(
        request, counted(body.model, "completions", lambda: serving.create(body), request)
    )
    if result is None:
        return Response(status_code=499)
    if body.stream:
        return StreamingResponse(sse_stream(result), media_type="text/event-stream")
    return JSONResponse(result)
