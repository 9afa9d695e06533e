"""Stored Responses API responses: what ``previous_response_id``, ``GET`` and ``DELETE
/v1/responses/{id}`` read.

A stored response is the ``response`` object as it was answered and the conversation in chat
form up to and including that answer (without the request's ``instructions``), so the next
turn is that conversation plus the new input. Entries live ``FUSION_RESPONSES_TTL_S`` and
belong to the key *name* that created them: the name is part of the storage key, so another
caller's id is simply not found (404, never 403: an id must not be confirmed to exist).

Where: Redis through the worker's one shared client when the gateway has Redis (every worker
and replica sees every response), else an in-memory LRU bounded by size (this worker only).
Unlike the result cache, a Redis outage does not fail open here: a ``previous_response_id``
that cannot be read is a 503, not a silent fresh conversation; a response that cannot be
written is logged and the answer, already served, stands.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog

from .cache import MemoryCache
from .errors import FusionError, NotFoundError
from .protocol import Message
from .redis_client import RedisBusy, SharedRedis, busy_error

log = structlog.get_logger("fusion_engine.responses")

KEY_PREFIX = "fusion:response:v1:"
#: Ids this gateway hands out (``resp_`` and hex); anything else cannot be stored here.
RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9]{1,64}")


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One stored response: the ``response`` object (its JSON, exactly as answered: encoded
    once for the reply and the store) and the chat conversation that ends with its answer."""

    response: msgspec.Raw
    conversation: list[Message]


class PreviousResponseNotFoundError(NotFoundError):
    """``previous_response_id`` names no response this caller stored (or it expired)."""

    code = "previous_response_not_found"


class ResponseStoreUnavailableError(FusionError):
    """The response store (Redis) cannot be reached right now."""

    status_code = 503
    error_type = "server_error"
    code = "response_store_unavailable"


# JSON rather than msgpack: the echoed request fields are the client's JSON, whose integers may
# be beyond 64 bits.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StoredResponse).decode


class ResponseStore:
    """Stored responses of every caller, on Redis (``redis``) or in memory.

    Args:
        redis: the worker's shared Redis client, or ``None`` for the in-memory store.
        ttl_s: how long an entry lives.
        max_bytes: the in-memory store's size bound (least recently used entries go first).
    """

    def __init__(self, redis: SharedRedis | None, *, ttl_s: int, max_bytes: int) -> None:
        self._redis = redis
        self._memory = MemoryCache(max_bytes) if redis is None else None
        self.ttl_s = ttl_s

    @property
    def backend(self) -> str:
        """``redis`` or ``memory``."""
        return "memory" if self._memory is not None else "redis"

    async def save(self, owner: str, response_id: str, stored: StoredResponse) -> None:
        """Keep ``stored`` for ``ttl_s`` (best effort: a failure is logged, not raised)."""
        key, value = _key(owner, response_id), _encode(stored)
        if self._memory is not None:
            await self._memory.set(key, value, self.ttl_s)
            return
        assert self._redis is not None
        try:
            await self._redis.run(lambda client: client.set(key, value, ex=self.ttl_s))
        except Exception as error:  # the answer was served; only the later lookup will miss
            log.warning("response_store_failed", operation="set", error=type(error).__name__)

    async def load(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response ``owner`` stored as ``response_id``, or ``None``.

        Raises:
            RateLimitedError: Redis is too busy (429, retry shortly).
            ResponseStoreUnavailableError: Redis is down (503).
        """
        if not RESPONSE_ID.fullmatch(response_id):
            return None
        key = _key(owner, response_id)
        if self._memory is not None:
            value = await self._memory.get(key)
        else:
            value = await self._run("get", lambda client: client.get(key))
        if not isinstance(value, bytes):
            return None
        try:
            return _decode(value)
        except msgspec.DecodeError:
            return None

    async def delete(self, owner: str, response_id: str) -> bool:
        """Forget a response; whether ``owner`` had one by that id.

        Raises:
            RateLimitedError: Redis is too busy (429, retry shortly).
            ResponseStoreUnavailableError: Redis is down (503).
        """
        if not RESPONSE_ID.fullmatch(response_id):
            return False
        key = _key(owner, response_id)
        if self._memory is not None:
            return await self._memory.delete(key)
        deleted = await self._run("delete", lambda client: client.delete(key))
        return bool(deleted)

    async def _run(self, operation: str, call: Any) -> Any:
        assert self._redis is not None
        try:
            return await self._redis.run(call)
        except RedisBusy as error:
            raise busy_error("read its stored responses") from error
        except Exception as error:
            log.warning("response_store_failed", operation=operation, error=type(error).__name__)
            raise ResponseStoreUnavailableError(
                "stored responses cannot be reached right now; try again shortly"
            ) from error

    async def aclose(self) -> None:
        """Drop the in-memory entries (the shared Redis client belongs to the gateway)."""
        if self._memory is not None:
            await self._memory.aclose()


def _key(owner: str, response_id: str) -> str:
    return f"{KEY_PREFIX}{owner}:{response_id}"


def previous_not_found(response_id: str) -> PreviousResponseNotFoundError:
    """The 404 of a ``previous_response_id`` that names nothing this caller stored."""
    return PreviousResponseNotFoundError(
        f"Previous response with id '{response_id}' not found.", param="previous_response_id"
    )


def response_not_found(response_id: str) -> NotFoundError:
    """The 404 of ``GET``/``DELETE`` for an id this caller has no response by."""
    return NotFoundError(f"Response with id '{response_id}' not found.")
