"""Count inference requests by model, endpoint and status (bounded label values)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from service import metrics
from service.errors import ModelNotFound, ServiceError
from service.tenancy import check_model, scope_of


async def counted(model: str, endpoint: str, call: Callable[[], Awaitable[Any]],
                  request: Request | None = None) -> Any:
    """Await ``call()`` and count its outcome. Unknown model names, and another project's
    models (checked first when ``request`` is given), are counted as ``unknown``: clients
    cannot grow the label set, and no label shows a model id to a caller it was hidden
    from."""
    try:
        if request is not None:
            check_model(request.app.state, model, scope_of(request))
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
