"""Bearer-key auth for the routes that spend money."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from ..errors import AuthenticationError
from ..ratelimit import identity_of
from ..settings import Secret


def check_bearer(authorization: str | None, keys: Sequence[Secret]) -> None:
    """Accept the request when its bearer key is one of ``keys`` (none configured: open).

    Every key is compared, in constant time, whatever matched, so timing tells nothing about
    how close a guess was or which key matched. The message never echoes what was sent.

    Raises:
        AuthenticationError: the key is missing or wrong.
    """
    if not keys:
        return
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise AuthenticationError(
            "missing API key: send it as 'Authorization: Bearer <key>'", param=None
        )
    candidate = presented.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.reveal().encode())
    if not matched:
        raise AuthenticationError("invalid API key")


def caller_identity(authorization: str | None) -> str:
    """Who is calling, for rate limits: a hash of the bearer key (``anonymous`` without one)."""
    scheme, _, presented = (authorization or "").partition(" ")
    return identity_of(presented.strip() if scheme.lower() == "bearer" else None)


async def api_key_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Litestar guard: the gateway's configured keys must match the request's bearer key.

    Async on purpose: Litestar runs a sync guard in a worker thread, a thread hop per request.
    """
    keys: tuple[Secret, ...] = connection.app.state.gateway.settings.server_api_keys
    check_bearer(connection.headers.get("authorization"), keys)
