"""Every error leaves the gateway in OpenAI's shape: ``{"error": {message, type, param, code}}``.

Our own ``FusionError``s carry their status; Litestar's ``HTTPException``s (unknown route, wrong
method, body over the size limit) are translated; anything unexpected is a logged 500 whose body
says nothing about the internals.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from ..errors import FusionError, RateLimitedError, UpstreamError
from .schema import ErrorBody, ErrorDetail

log = structlog.get_logger("fusion_engine.server")
_encode = msgspec.json.Encoder().encode

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
_CODE_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_payload(error: FusionError) -> ErrorBody:
    """The OpenAI error body for one of our errors."""
    return ErrorBody(
        ErrorDetail(
            message=error.message, type=error.error_type, param=error.param, code=error.code
        )
    )


def status_of(error: FusionError) -> int:
    """The HTTP status: a passed-through provider error keeps the provider's status."""
    if isinstance(error, UpstreamError) and error.status and 400 <= error.status < 600:
        return error.status
    return error.status_code


def error_response(error: FusionError) -> Response[bytes]:
    """A JSON error response for ``error``, with ``Retry-After`` when one applies."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, RateLimitedError | UpstreamError) and retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return json_response(error_payload(error), status_of(error), headers)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """A response whose body is ``body`` encoded once with msgspec."""
    return Response(
        content=_encode(body), status_code=status, media_type=MediaType.JSON, headers=headers
    )


def handle_fusion_error(request: Request[Any, Any, Any], exc: FusionError) -> Response[bytes]:
    """Exception handler for our own errors."""
    if exc.status_code >= 500:
        log.warning("request_failed", path=request.url.path, error=exc.message, code=exc.code)
    return error_response(exc)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Exception handler for Litestar's own HTTP errors (404 route, 405, 413 body size...)."""
    status = exc.status_code
    error_type = _TYPE_BY_STATUS.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    message = exc.detail or "error"
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    elif status == 413:
        message = "the request body is larger than the gateway accepts"
    body = ErrorBody(
        ErrorDetail(message=message, type=error_type, param=None, code=_CODE_BY_STATUS.get(status))
    )
    return json_response(body, status, dict(exc.headers or {}))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Exception handler of last resort: log it, tell the client nothing internal."""
    log.exception("unhandled_error", path=request.url.path)
    body = ErrorBody(
        ErrorDetail(
            message="internal error in the gateway", type="server_error", param=None,
            code="internal_error",
        )
    )  # fmt: skip
    return json_response(body, 500)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FusionError: handle_fusion_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
