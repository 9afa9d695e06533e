"""Bearer-key auth for the routes that spend money: who is calling, by key name."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from litestar import Request

from ..errors import AuthenticationError
from ..settings import ApiKey
from .gateway import gateway_of

#: The caller's name when the server has no keys (loopback only, or FUSION_ALLOW_NO_AUTH=1).
ANONYMOUS = "anonymous"


def check_bearer(authorization: str | None, keys: Sequence[ApiKey]) -> str:
    """The name of the key ``authorization`` carries (``anonymous`` when none are configured).

    Every key is compared, in constant time, whatever matched, so timing tells nothing about
    how close a guess was or which key matched. The message never echoes what was sent.

    Raises:
        AuthenticationError: the key is missing or wrong.
    """
    if not keys:
        return ANONYMOUS
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise AuthenticationError(
            "missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
            param=None,
        )
    candidate = presented.strip().encode()
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(candidate, key.secret.reveal().encode()) and matched is None:
            matched = key.name
    if matched is None:
        raise AuthenticationError("invalid API key")
    return matched


def authenticate(request: Request[Any, Any, Any]) -> str:
    """Check the request's bearer key against the gateway's keys; the caller's key name.

    Called by the handlers themselves rather than installed as a Litestar guard: Litestar
    copies the route handler for every guard call, a few percent of a passthrough request's
    CPU.

    Raises:
        AuthenticationError: the key is missing or wrong.
    """
    keys = gateway_of(request).settings.server_api_keys
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization is None and (api_key := headers.get("x-api-key")):
        # Anthropic's clients send the key as ``x-api-key`` (Claude Code with ANTHROPIC_API_KEY).
        authorization = f"Bearer {api_key}"
    return check_bearer(authorization, keys)
