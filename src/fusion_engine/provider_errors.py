"""Translate what a provider says when it fails into ``UpstreamError``.

Providers answer errors in many shapes (OpenAI's, OpenRouter's, flat vLLM bodies, plain strings,
a CDN's HTML page); all end up as one typed error, with the provider key redacted. Everything
built from upstream text passes through ``scrub`` (or ``redact``, which also shortens).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from .config import Provider
from .errors import ProviderErrorInfo, UpstreamError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: A secret shorter than this is not searched for: replacing a one-letter key (the README's
#: ``OPENROUTER_API_KEY=x`` for a local server) would garble every message, and a key that
#: short protects nothing anyway.
MIN_SECRET_CHARS = 8
#: The longest provider message relayed as is (a passthrough error keeps the provider's words).
PROVIDER_MESSAGE_LIMIT = 4000

_decode_any = msgspec.json.Decoder().decode


class ProviderErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The OpenAI error fields a provider's error body carried (any that were strings)."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None


def error_from_body(
    provider: Provider,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
) -> UpstreamError:
    """Translate a non-2xx response (any body shape, even HTML) into an ``UpstreamError``."""
    parsed = error_body(body.decode("utf-8", "replace"))
    provider_message = redact(parsed.message, provider, limit=PROVIDER_MESSAGE_LIMIT)
    message = redact(parsed.message or f"HTTP {status}", provider)
    should_retry = headers.get("x-should-retry", "").lower()
    retryable = status in RETRYABLE_STATUSES
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    kind = "rate_limited" if status == 429 else "http_error"
    retry_after = retry_after_seconds(headers)
    info = ProviderErrorInfo(
        status=status, type=parsed.type, code=parsed.code, param=parsed.param,
        retry_after=retry_after,
    )  # fmt: skip
    error = UpstreamError(
        f"{provider.name} answered {status}: {message}", status=status, retryable=retryable,
        retry_after=retry_after, kind=kind,
    )  # fmt: skip
    error.provider_error = info
    error.provider_message = provider_message or None
    return error


def error_body(text: str) -> ProviderErrorBody:
    """The message, type, code and param of an error body of any known shape (OpenAI,
    OpenRouter, flat, string). Non-JSON bodies (a CDN's HTML page) yield nothing: their text
    is not worth showing. Non-string codes (OpenRouter repeats the status) are left out."""
    try:
        body = _decode_any(text)
    except msgspec.DecodeError:
        return ProviderErrorBody()
    if not isinstance(body, dict):
        return ProviderErrorBody()
    error = body.get("error", body)
    if isinstance(error, str):
        return ProviderErrorBody(message=error)
    if not isinstance(error, dict):
        return ProviderErrorBody()
    fields = {
        name: value
        for name in ("message", "type", "code", "param")
        if isinstance(value := error.get(name), str)
    }
    return ProviderErrorBody(**fields)


def error_message(text: str) -> str | None:
    """The human message in an error body of any known shape (see ``error_body``)."""
    return error_body(text).message


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


def scrub(text: str, provider: Provider) -> str:
    """``text`` with the provider's key replaced by ``***`` wherever it appears (a key shorter
    than ``MIN_SECRET_CHARS`` is left alone, see there)."""
    if provider.api_key is None:
        return text
    key = provider.api_key.reveal()
    if len(key) < MIN_SECRET_CHARS:
        return text
    return text.replace(key, "***")


def redact(message: str | None, provider: Provider, *, limit: int = 500) -> str:
    """Remove the provider's key from a message (in case a provider echoes it), then shorten it.

    Redaction comes first so a key straddling the cut cannot survive as a prefix.
    """
    message = scrub(message or "", provider)
    return message if len(message) <= limit else message[:limit] + "…"


def scrub_error(error: UpstreamError, provider: Provider) -> UpstreamError:
    """``error`` with the provider's key removed from every text it carries (applied to every
    error leaving the upstream client, whichever path built it)."""
    error.message = scrub(error.message, provider)
    error.args = (error.message,)
    if error.provider_message is not None:
        error.provider_message = scrub(error.provider_message, provider)
    info = error.provider_error
    if info is not None:
        # type, code and param are the provider's text too (relayed by the passthrough).
        fields = {"type": info.type, "code": info.code, "param": info.param}
        error.provider_error = msgspec.structs.replace(
            info, **{name: scrub(value, provider) for name, value in fields.items() if value}
        )
    return error
