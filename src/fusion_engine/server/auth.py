"""Bearer-key auth for the routes that spend money: who is calling, by key name (the key ring
of ``keys.py`` holds the keys and each name's policy)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from ..errors import AuthenticationError
from ..keys import ANONYMOUS, KeyPolicy, KeyRing
from .gateway import gateway_of


def check_bearer(authorization: str | None, keys: KeyRing) -> str:
    """The name of the key ``authorization`` carries (``anonymous`` when none are configured).

    Every key is compared, in constant time, whatever matched (``KeyRing.name_of``). The
    message never echoes what was sent.

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
    matched = keys.name_of(presented.strip())
    if matched is None:
        raise AuthenticationError("invalid API key")
    return matched


def caller_policy(request: Request[Any, Any, Any]) -> KeyPolicy | None:
    """The policy of the key a request carries, if it carries a valid one (routes that need
    no key, such as ``/v1/models``, tailor their answer to a caller that names itself)."""
    gateway = gateway_of(request)
    if not gateway.keys:
        return None
    try:
        return gateway.keys.policy(authenticate(request))
    except AuthenticationError:
        return None


def authenticate(request: Request[Any, Any, Any]) -> str:
    """Check the request's bearer key against the gateway's keys; the caller's key name.

    Called by the handlers themselves rather than installed as a Litestar guard: Litestar
    copies the route handler for every guard call, a few percent of a passthrough request's
    CPU.

    Raises:
        AuthenticationError: the key is missing or wrong.
    """
    keys = gateway_of(request).keys
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization is None and (api_key := headers.get("x-api-key")):
        # Anthropic's clients send the key as ``x-api-key`` (Claude Code with ANTHROPIC_API_KEY).
        authorization = f"Bearer {api_key}"
    return check_bearer(authorization, keys)
