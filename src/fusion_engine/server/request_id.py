"""``X-Request-Id`` on every reply: the client's value when it is sane, else a fresh one."""

from __future__ import annotations

import os
import re
from typing import Any

from litestar.types import Message, Scope

HEADER = "x-request-id"
HEADER_BYTES = HEADER.encode()
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def request_id(scope: Scope | dict[str, Any]) -> str:
    """The request's id, chosen once per request and remembered in the scope's state."""
    state = scope.setdefault("state", {})
    chosen: str | None = state.get("request_id")
    if chosen is None:
        chosen = _from_headers(scope.get("headers", ())) or new_id()
        state["request_id"] = chosen
    return chosen


def new_id() -> str:
    """32 random hex digits: a uuid4's randomness without building a UUID (cheaper per call)."""
    return os.urandom(16).hex()


def _from_headers(headers: Any) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _ACCEPTABLE.match(text) else None
    return None


async def add_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: stamp the id on the response start of every HTTP reply."""
    if message["type"] == "http.response.start":
        # Appended, not set: no handler sets this header, and appending skips the parse and
        # rebuild of every header that a MutableScopeHeaders assignment does.
        stamp = (HEADER_BYTES, request_id(scope).encode("latin-1"))
        message["headers"] = [*message.get("headers", ()), stamp]
