"""Every error leaves the gateway in OpenAI's shape: ``{"error": {message, type, param, code}}``
— or, on the Anthropic Messages route (paths under ``/v1/messages``), in Anthropic's
``{"type": "error", "error": {type, message}}`` with the same status and headers.

Our own ``FusionError``s carry their status; Litestar's ``HTTPException``s (unknown route, wrong
method, body over the size limit) are translated; anything unexpected is a logged 500 whose body
says nothing about the internals. A passed-through provider error keeps the provider's ``type``,
``code`` and ``param`` (its message was scrubbed of our key by the upstream client).

``x-should-retry: false`` goes with every error a client should not retry (``client_may_retry``):
the official SDKs retry 408/409/429/5xx twice by default, which on top of the gateway's own three
attempts per call made nine upstream calls for one failing request.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from ..errors import FusionError, JudgeFailedError, PanelFailedError, UpstreamError
from ..messages_api import error_body as anthropic_error_body
from .schema import ErrorBody, ErrorDetail

log = structlog.get_logger("fusion_engine.server")
_encode = msgspec.json.Encoder().encode

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
#: Statuses an OpenAI SDK retries on its own; any other 4xx is final.
_SDK_RETRIES = frozenset({408, 409, 429})
_CODE_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_payload(error: FusionError) -> ErrorBody:
    """The OpenAI error body for one of our errors (a provider's own fields for its errors)."""
    if isinstance(error, UpstreamError) and error.provider_error is not None:
        info = error.provider_error
        default_type = _TYPE_BY_STATUS.get(
            info.status, "invalid_request_error" if info.status < 500 else error.error_type
        )
        return ErrorBody(
            ErrorDetail(
                message=error.provider_message or error.message,
                type=info.type or default_type,
                param=info.param,
                code=info.code if info.code is not None or info.status < 500 else error.code,
            )
        )
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


def client_may_retry(status: int, *, retried_upstream: bool) -> bool:
    """Whether a client should retry an error reply with ``status`` (pure).

    A 4xx other than 408/409/429 fails the same way again. A 408/429/5xx that the gateway
    produced after its own retries of the upstream call (``retried_upstream``) has had its
    retries: a client's would multiply them. The gateway's own 429 (rate limit) and 5xx
    (missing key, internal error) stay retryable.
    """
    if 400 <= status < 500 and status not in _SDK_RETRIES:
        return False
    return not (retried_upstream and status != 409)


def speaks_anthropic(request: Request[Any, Any, Any]) -> bool:
    """Whether errors to ``request`` take Anthropic's shape (the Messages API's routes)."""
    return request.url.path.startswith("/v1/messages")


def error_response(error: FusionError, *, anthropic: bool = False) -> Response[bytes]:
    """A JSON error response for ``error``, with ``Retry-After`` when one applies and
    ``x-should-retry: false`` when a client retry would be wasted; in Anthropic's shape when
    ``anthropic``."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, round(retry_after)))
    status = status_of(error)
    if anthropic and isinstance(error, UpstreamError) and status in (401, 403):
        # The provider refused the gateway's own key: Anthropic's clients read a 401/403 as
        # their key being wrong (Claude Code tells its user to log in again).
        status = 502
    # Errors that come after the gateway's own retries of every call involved (a failed judge
    # chain included); a provider's Retry-After past the budget leaves the client its own try.
    retried_upstream = isinstance(
        error, UpstreamError | PanelFailedError | JudgeFailedError
    ) and not getattr(error, "retry_later", False)
    if not client_may_retry(status, retried_upstream=retried_upstream):
        headers["x-should-retry"] = "false"
    if anthropic:
        message = error_payload(error).error.message
        return json_response(anthropic_error_body(status, message), status, headers)
    return json_response(error_payload(error), status, headers)


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
    return error_response(exc, anthropic=speaks_anthropic(request))


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
    headers = dict(exc.headers or {})
    if not client_may_retry(status, retried_upstream=False):
        headers["x-should-retry"] = "false"
    if speaks_anthropic(request):
        return json_response(anthropic_error_body(status, message), status, headers)
    return json_response(body, status, headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Exception handler of last resort: log it, tell the client nothing internal."""
    log.exception("unhandled_error", path=request.url.path)
    if speaks_anthropic(request):
        return json_response(anthropic_error_body(500, "internal error in the gateway"), 500)
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
