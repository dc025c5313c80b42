"""One error shape for the whole API: ``{"error": {"message", "type", "param", "code"}}``.

Logic raises a typed :class:`ServiceError`; the handlers registered by
:func:`register_error_handlers` turn it (and FastAPI's own errors) into that envelope,
following vLLM's ``ErrorResponse`` and OpenAI's error object. Unexpected exceptions become
a 500 with a generic message: never a stack trace to a client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ServiceError(Exception):
    """Base of every error the API reports on purpose."""

    status_code: int = HTTPStatus.BAD_REQUEST
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    @classmethod
    def for_status(
        cls,
        message: str,
        status_code: int,
        type: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> ServiceError:
        """An error with a status not tied to a subclass (a 500, a framework's 405/413)."""
        error = cls(message, code=code, headers=headers)
        error.status_code, error.type = status_code, type
        return error


class BadRequest(ServiceError):
    """A request parameter is invalid (400)."""


class PromptTooLong(ServiceError):
    """Prompt plus requested completion do not fit the context (400)."""

    code = "context_length_exceeded"


class ModelNotFound(ServiceError):
    """The requested model is neither the base nor a registered adapter (404)."""

    status_code = HTTPStatus.NOT_FOUND
    code = "model_not_found"


class NotFound(ServiceError):
    status_code = HTTPStatus.NOT_FOUND
    code = "not_found"


class AdapterRejected(ServiceError):
    """An adapter failed a check before serving; ``message`` says why and how to fix it."""

    code = "adapter_rejected"


class Conflict(ServiceError):
    status_code = HTTPStatus.CONFLICT
    code = "conflict"


class Unauthorized(ServiceError):
    status_code = HTTPStatus.UNAUTHORIZED
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ServiceError):
    status_code = HTTPStatus.FORBIDDEN
    type = "permission_error"
    code = "insufficient_permissions"


class Overloaded(ServiceError):
    """Too many requests in flight (429) – the client should retry later."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Unavailable(ServiceError):
    """The engine is not ready or has died (503)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable"
    code = "engine_unavailable"


_STATUS_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(exc: ServiceError) -> dict:
    """The JSON body for ``exc``."""
    info = ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    return ErrorResponse(error=info).model_dump()


def create_error_response(exc: BaseException) -> JSONResponse:
    """Map any exception to the OpenAI error envelope with the right status code.

    ServiceError keeps its status; ValueError/TypeError are bad input (400); anything
    else is a 500 whose details stay in the server log.
    """
    if not isinstance(exc, ServiceError):
        if isinstance(exc, ValueError | TypeError):
            exc = BadRequest(str(exc))
        else:
            logger.exception("internal error", exc_info=exc)
            exc = ServiceError.for_status(
                "internal server error",
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            )
    return JSONResponse(error_body(exc), status_code=int(exc.status_code), headers=exc.headers)


def validation_message(exc: RequestValidationError | ValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown parameter: this server does not support it"
    return (f"{param}: {msg}" if param else msg), param


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that make every error the same envelope."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return create_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return create_error_response(BadRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err_type, code = _STATUS_TYPES.get(exc.status_code, ("server_error", None))
        headers = dict(exc.headers or {})
        error = ServiceError.for_status(str(exc.detail), exc.status_code, err_type, code, headers)
        return create_error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return create_error_response(exc)
