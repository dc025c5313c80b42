"""Count inference requests by model, endpoint and status (bounded label values)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from service import metrics
from service.errors import ModelNotFound, ServiceError


async def counted(model: str, endpoint: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``call()`` and count its outcome. Unknown model names are counted as
    ``unknown`` so clients cannot grow the label set."""
    try:
        result = await call()
    except ModelNotFound:
        metrics.REQUESTS.labels("unknown", endpoint, "404").inc()
        raise
    except ServiceError as exc:
        metrics.REQUESTS.labels(model, endpoint, str(int(exc.status_code))).inc()
        raise
    except Exception:
        metrics.REQUESTS.labels(model, endpoint, "500").inc()
        raise
    metrics.REQUESTS.labels(model, endpoint, "200").inc()
    return result
