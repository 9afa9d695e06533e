"""Translate what a provider says when it fails into ``UpstreamError``.

Providers answer errors in many shapes (OpenAI's, OpenRouter's, flat vLLM bodies, plain strings,
a CDN's HTML page); all end up as one typed error, with the provider key redacted.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import msgspec

from .config import Provider
from .errors import UpstreamError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 522, 524, 529})

_decode_any = msgspec.json.Decoder().decode


async def error_from_response(
    provider: Provider, response: aiohttp.ClientResponse
) -> UpstreamError:
    """Translate a non-2xx response into an ``UpstreamError`` (any body shape, even HTML)."""
    status = response.status
    text = (await response.read()).decode("utf-8", "replace")
    message = redact(error_message(text) or f"HTTP {status}", provider)
    should_retry = response.headers.get("x-should-retry", "").lower()
    retryable = status in RETRYABLE_STATUSES
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    kind = "rate_limited" if status == 429 else "http_error"
    return UpstreamError(
        f"{provider.name} answered {status}: {message}", status=status, retryable=retryable,
        retry_after=retry_after_seconds(response.headers), kind=kind,
    )  # fmt: skip


def error_message(text: str) -> str | None:
    """The human message in an error body of any known shape (OpenAI, OpenRouter, flat, string).

    Non-JSON bodies (a CDN's HTML page) yield ``None``: their text is not worth showing.
    """
    try:
        body = _decode_any(text)
    except msgspec.DecodeError:
        return None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds) as seconds; HTTP dates are ignored."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None


def redact(message: str, provider: Provider, *, limit: int = 500) -> str:
    """Remove the provider's key from a message (in case a provider echoes it), then shorten it.

    Redaction comes first so a key straddling the cut cannot survive as a prefix.
    """
    if provider.api_key is not None:
        message = message.replace(provider.api_key.reveal(), "***")
    return message if len(message) <= limit else message[:limit] + "…"
