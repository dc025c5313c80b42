"""Server-sent events as the OpenAI API streams them: ``data: JSON`` lines, ``[DONE]`` last."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from service.errors import ServiceError, error_body

logger = logging.getLogger(__name__)


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def sse_stream(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Encode ``chunks``; an error mid-stream becomes one error event, then ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield event(chunk)
    except ServiceError as exc:
        yield event(error_body(exc))
    except Exception:
        logger.exception("error while streaming")
        yield event({"error": {"message": "internal server error", "type": "server_error",
                               "param": None, "code": "internal_error"}})
    yield "data: [DONE]\n\n"
