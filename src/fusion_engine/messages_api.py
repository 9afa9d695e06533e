"""The Anthropic Messages API (``POST /v1/messages``) to and from the gateway's chat-completions
form. Pure: no Litestar, no aiohttp.
"""

from __future__ import annotations

from typing import Any

#: Anthropic's error ``type`` for each status the gateway answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_type_of(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (other 4xx are invalid requests, other
    5xx are API errors)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type_of(status), "message": message}}
