"""Bearer-key auth for the routes that spend money."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from litestar import Request

from ..errors import AuthenticationError
from ..ratelimit import identity_of
from ..settings import Secret
from .gateway import gateway_of


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


def authenticate(request: Request[Any, Any, Any]) -> str:
    """Check the request's bearer key against the gateway's keys; who is calling.

    Called by the handlers themselves rather than installed as a Litestar guard: Litestar
    copies the route handler for every guard call, a few percent of a passthrough request's
    CPU.

    Raises:
        AuthenticationError: the key is missing or wrong.
    """
    authorization = request.headers.get("authorization")
    check_bearer(authorization, gateway_of(request).settings.server_api_keys)
    return caller_identity(authorization)


async def admit(request: Request[Any, Any, Any]) -> str:
    """Authenticate a request that spends money and apply the caller's request rate limit.

    Raises:
        AuthenticationError: the key is missing or wrong.
        RateLimitError: the caller is over its requests per minute.
    """
    identity = authenticate(request)
    await gateway_of(request).limiter.check_request(identity)
    return identity
