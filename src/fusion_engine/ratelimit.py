"""Per-key rate limits: requests per minute and concurrent fusions, shared through Redis.

Hand-written rather than taken from ``limits`` because the concurrency limit (leases held for
the life of a fusion, streams included) is not a rate; both live in one small module with two
stores. Windows are fixed minutes (a key may burst up to twice the limit across a minute
boundary; simple and exact to test). Limits apply per key *name* (two rotated keys sharing a
name share them); names come from the config, never from a request. With Redis every worker
and replica shares the counts. Redis that is down takes the ``fail_open`` path (requests pass,
by default, or are refused); Redis that is merely busy (the worker's pool had no free
connection within its bounded wait) is back-pressure: the request is refused with a 429 and
``Retry-After``, never let through unchecked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from .config import RateLimitSpec
from .errors import RateLimitedError
from .redis_client import RedisBusy, SharedRedis, busy_error

log = structlog.get_logger("fusion_engine.ratelimit")
WINDOW_S = 60
#: A concurrency lease outlives a crashed worker by at most this long.
LEASE_S = 900
#: Giving a lease back is retried this often when Redis is busy (a lease that is not given
#: back blocks its key's slot until it expires).
RELEASE_ATTEMPTS = 3


class LimitStore(Protocol):
    """Where counts live."""

    async def count_request(self, identity: str, window: int) -> int:
        """Add one request to ``identity``'s window; return the window's count."""
        ...

    async def acquire(self, identity: str, token: str, limit: int, now: float) -> bool:
        """Take a concurrency lease if fewer than ``limit`` are held."""
        ...

    async def release(self, identity: str, token: str) -> None:
        """Give a lease back."""
        ...


class MemoryLimitStore:
    """Counts in this process (one worker)."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}
        self._leases: dict[str, set[str]] = {}

    async def count_request(self, identity: str, window: int) -> int:
        current, count = self._windows.get(identity, (window, 0))
        count = count + 1 if current == window else 1
        self._windows[identity] = (window, count)
        return count

    async def acquire(self, identity: str, token: str, limit: int, now: float) -> bool:
        held = self._leases.setdefault(identity, set())
        if len(held) >= limit:
            return False
        held.add(token)
        return True

    async def release(self, identity: str, token: str) -> None:
        self._leases.get(identity, set()).discard(token)


# Take a lease atomically: drop expired ones, then add ours if there is room.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisLimitStore:
    """Counts in Redis, shared by every worker and replica (through the worker's one client)."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._acquire = redis.client.register_script(_ACQUIRE)

    async def count_request(self, identity: str, window: int) -> int:
        name = f"fusion:ratelimit:{identity}:{window}"

        async def count(client: Any) -> int:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, WINDOW_S * 2)
                counted, _ = await pipe.execute()
            return int(counted)

        return await self._redis.run(count)

    async def acquire(self, identity: str, token: str, limit: int, now: float) -> bool:
        name = f"fusion:concurrency:{identity}"
        args: list[str | float] = [now, limit, now + LEASE_S, token, LEASE_S]
        taken = await self._redis.run(lambda client: self._acquire(keys=[name], args=args))
        return bool(taken)

    async def release(self, identity: str, token: str) -> None:
        name = f"fusion:concurrency:{identity}"
        await self._redis.run(lambda client: client.zrem(name, token), skip_if_down=False)


class Lease:
    """A concurrent-fusion slot, held until ``release`` (also an async context manager).

    Release is idempotent and finishes even if the releasing task is cancelled meanwhile (a
    client that leaves must not keep its slot until the lease expires).
    """

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], Awaitable[None]] | None) -> None:
        self._release = release

    async def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        release, self._release = self._release, None
        if release is not None:
            await asyncio.shield(release())

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class RateLimiter:
    """Applies the config's ``rate_limit`` to callers.

    Args:
        spec: the limits (``None`` fields are unlimited).
        store: where counts live.
        fail_open: when the store fails, let requests through (True) or refuse them (False).
        clock: wall-clock seconds (injectable for exact tests).
    """

    def __init__(
        self,
        spec: RateLimitSpec,
        store: LimitStore,
        *,
        fail_open: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self._store = store
        self._fail_open = fail_open
        self._clock = clock
        self._last_logged = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured."""
        return bool(self.spec.requests_per_minute or self.spec.concurrent_fusions)

    async def check_request(self, identity: str, spec: RateLimitSpec | None = None) -> None:
        """Count one request against the per-minute limit (``spec``'s, else the default).

        Raises:
            RateLimitedError: over the limit (with the seconds until the window resets).
        """
        limit = (spec or self.spec).requests_per_minute
        if not limit:
            return
        now = self._clock()
        window = int(now // WINDOW_S)
        try:
            count = await self._store.count_request(identity, window)
        except RedisBusy as error:
            raise busy_error("check rate limits") from error
        except Exception as error:
            self._store_failed(error)
            return
        if count > limit:
            retry_after = (window + 1) * WINDOW_S - now
            raise RateLimitedError(
                f"rate limit reached: {limit} requests per minute", retry_after=retry_after
            )

    async def fusion_slot(self, identity: str, spec: RateLimitSpec | None = None) -> Lease:
        """One of the caller's concurrent-fusion slots (``spec``'s limit, else the default),
        held until the lease is released.

        Raises:
            RateLimitedError: every slot is taken (or Redis is too busy to tell).
        """
        limit = (spec or self.spec).concurrent_fusions
        if not limit:
            return Lease(None)
        token = uuid.uuid4().hex
        try:
            taken = await self._store.acquire(identity, token, limit, self._clock())
        except RedisBusy as error:
            raise busy_error("check rate limits") from error
        except Exception as error:
            self._store_failed(error)
            return Lease(None)
        if not taken:
            raise RateLimitedError(
                f"too many fusions at once: at most {limit} per key", retry_after=1
            )
        return Lease(lambda: self._release(identity, token))

    async def _release(self, identity: str, token: str) -> None:
        for _ in range(RELEASE_ATTEMPTS):
            try:
                await self._store.release(identity, token)
                return
            except RedisBusy:
                continue
            except Exception as error:  # the lease expires by itself
                self._store_failed(error, refuse=False)
                return
        log.warning("rate_limit_lease_not_released", key=identity)

    def _store_failed(self, error: BaseException, *, refuse: bool = True) -> None:
        now = time.monotonic()
        if now - self._last_logged > 30:
            self._last_logged = now
            log.warning("rate_limit_store_unavailable", error=type(error).__name__)
        if refuse and not self._fail_open:
            raise RateLimitedError(
                "rate limits cannot be checked right now; try again shortly", retry_after=5
            ) from error
