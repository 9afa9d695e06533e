"""Per-key rate limits: requests per minute and concurrent fusions, shared through Redis.

Hand-written rather than taken from ``limits`` because the concurrency limit (leases held for
the life of a fusion, streams included) is not a rate; both live in one small module with two
stores. Windows are fixed minutes (a key may burst up to twice the limit across a minute
boundary; simple and exact to test). With Redis every worker and replica shares the counts;
when Redis fails, ``fail_open`` decides whether requests pass (default) or are refused.
Keys are hashed before they are used as Redis names: no key is ever stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import structlog

from .config import RateLimitSpec
from .errors import RateLimitedError

log = structlog.get_logger("fusion_engine.ratelimit")
WINDOW_S = 60
#: A concurrency lease outlives a crashed worker by at most this long.
LEASE_S = 900
REDIS_TIMEOUT_S = 0.25


def identity_of(key: str | None) -> str:
    """A stable, non-reversible name for a caller's key (``anonymous`` without auth)."""
    if not key:
        return "anonymous"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


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
    """Counts in Redis, shared by every worker and replica."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._acquire = self._redis.register_script(_ACQUIRE)

    async def count_request(self, identity: str, window: int) -> int:
        name = f"fusion:ratelimit:{identity}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, WINDOW_S * 2)
            count, _ = await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT_S)
        return int(count)

    async def acquire(self, identity: str, token: str, limit: int, now: float) -> bool:
        name = f"fusion:concurrency:{identity}"
        args: list[str | float] = [now, limit, now + LEASE_S, token, LEASE_S]
        taken = await asyncio.wait_for(self._acquire(keys=[name], args=args), REDIS_TIMEOUT_S)
        return bool(taken)

    async def release(self, identity: str, token: str) -> None:
        name = f"fusion:concurrency:{identity}"
        await asyncio.wait_for(self._redis.zrem(name, token), REDIS_TIMEOUT_S)

    async def aclose(self) -> None:
        await self._redis.aclose()


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

    async def check_request(self, identity: str) -> None:
        """Count one request against the per-minute limit.

        Raises:
            RateLimitedError: over the limit (with the seconds until the window resets).
        """
        limit = self.spec.requests_per_minute
        if not limit:
            return
        now = self._clock()
        window = int(now // WINDOW_S)
        try:
            count = await self._store.count_request(identity, window)
        except Exception as error:
            self._store_failed(error)
            return
        if count > limit:
            retry_after = (window + 1) * WINDOW_S - now
            raise RateLimitedError(
                f"rate limit reached: {limit} requests per minute", retry_after=retry_after
            )

    @asynccontextmanager
    async def fusion_slot(self, identity: str) -> AsyncIterator[None]:
        """Hold one of the caller's concurrent-fusion slots while the block runs.

        Raises:
            RateLimitedError: every slot is taken.
        """
        limit = self.spec.concurrent_fusions
        if not limit:
            yield
            return
        token = uuid.uuid4().hex
        try:
            taken = await self._store.acquire(identity, token, limit, self._clock())
        except Exception as error:
            self._store_failed(error)
            yield
            return
        if not taken:
            raise RateLimitedError(
                f"too many fusions at once: at most {limit} per key", retry_after=1
            )
        try:
            yield
        finally:
            try:
                await self._store.release(identity, token)
            except Exception as error:  # the lease expires by itself
                self._store_failed(error, refuse=False)

    def _store_failed(self, error: BaseException, *, refuse: bool = True) -> None:
        now = time.monotonic()
        if now - self._last_logged > 30:
            self._last_logged = now
            log.warning("rate_limit_store_unavailable", error=type(error).__name__)
        if refuse and not self._fail_open:
            raise RateLimitedError(
                "rate limits cannot be checked right now; try again shortly", retry_after=5
            ) from error
