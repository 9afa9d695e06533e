"""A worker's one Redis client, shared by the cache, rate limits and learnt prices.

Built in the app's lifespan (after the fork, on the serving loop) and passed to every user.
Its pool is bounded and *blocking*: when every connection is busy, an operation waits for
one, up to ``POOL_WAIT_S``, and only then fails with ``RedisBusy`` — back-pressure, which
callers must never treat as an outage (a rate limit that let requests through because the
pool was full would be no limit at all). The wait for a connection is separate from the
per-operation socket timeout (``OP_TIMEOUT_S``, for connecting and for each reply).

How "busy" and "down" are told apart: ``RedisBusy`` is raised only by the pool, when its
bounded wait for a free connection ran out, while Redis answered the operations holding
those connections. ``RedisDown`` is a failure of the network exchange itself: connection
refused or reset, or no reply within the socket timeout. A timeout is remembered: for
``DOWN_RETRY_S`` Redis is reported down without trying (so a Redis that hangs costs each
request nothing rather than a socket timeout), then tried again. A refused or reset
connection costs nothing to find out, so it is not remembered: a restarted Redis is used
again at once. Only ``RedisDown`` takes the ``fail_open`` path.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import RateLimitedError

if TYPE_CHECKING:  # redis is the server extra: imported only when Redis is configured
    from redis.asyncio import Redis

T = TypeVar("T")

#: Connections per worker. Each operation holds one for a round trip (well under a
#: millisecond on a healthy Redis), so 64 serve thousands of concurrent requests.
POOL_SIZE = 64
#: How long an operation waits for a free connection before ``RedisBusy``.
POOL_WAIT_S = 5.0
#: Socket timeout for connecting and for each reply. Generous, because under load the event
#: loop itself may take a while to read a reply that has long arrived: a spurious timeout
#: would look like an outage and open the fail-open path.
OP_TIMEOUT_S = 2.0
#: After Redis failed to answer in time, how long it is reported down without trying it.
DOWN_RETRY_S = 1.0


class RedisBusy(Exception):
    """Every pooled connection stayed busy for the bounded wait: back-pressure, not an outage."""


class RedisDown(Exception):
    """Redis cannot be reached (refused, reset, or no reply in time), now or a moment ago."""


def busy_error(what: str) -> RateLimitedError:
    """The 429 a request gets when the worker's Redis pool stayed full past its bounded wait
    while ``what`` (e.g. "check rate limits"): back-pressure, never a bypass."""
    return RateLimitedError(
        f"the gateway is too busy to {what} right now; try again shortly", retry_after=1
    )


@functools.cache
def _bounded_pool_class() -> type[Any]:
    """A blocking pool whose exhausted wait raises ``RedisBusy`` instead of a connection
    error (which redis-py's own retries, and callers, would take for an outage)."""
    from redis.asyncio import BlockingConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError

    class BoundedPool(BlockingConnectionPool):
        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except RedisConnectionError as error:
                # redis-py reports the bounded wait running out as ConnectionError caused by
                # TimeoutError; a failed connect has an OSError (or a redis error) as cause.
                if isinstance(error.__cause__, TimeoutError):
                    raise RedisBusy(f"no free Redis connection within {self.timeout} s") from error
                raise

    return BoundedPool


class SharedRedis:
    """The worker's Redis client with the busy/down distinction and a short outage memory.

    Args:
        client: a ``redis.asyncio.Redis`` (``connect`` builds the right one).
        clock: monotonic seconds (injectable for exact tests).
    """

    def __init__(self, client: Redis, *, clock: Callable[[], float] = time.monotonic) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.client = client
        self._clock = clock
        self._down_until = 0.0
        self._outages: tuple[type[BaseException], ...] = (RedisConnectionError, OSError)
        self._timeouts: tuple[type[BaseException], ...] = (RedisTimeoutError, TimeoutError)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        max_connections: int = POOL_SIZE,
        pool_wait_s: float = POOL_WAIT_S,
        op_timeout_s: float = OP_TIMEOUT_S,
    ) -> SharedRedis:
        """A client for ``url`` on a bounded blocking pool (connects lazily, on first use)."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        pool = _bounded_pool_class().from_url(
            url,
            max_connections=max_connections,
            timeout=pool_wait_s,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            # A broken connection (Redis restarted) is retried once, on a fresh one; a
            # timeout never is: that would double what a hung Redis costs a request.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(Redis(connection_pool=pool))

    async def run(
        self, operation: Callable[[Redis], Awaitable[T]], *, skip_if_down: bool = True
    ) -> T:
        """``operation(client)``, with Redis trouble sorted into busy and down.

        Args:
            operation: what to do with the client.
            skip_if_down: fail at once while Redis was unreachable a moment ago; ``False``
                tries anyway (giving a concurrency lease back must not be skipped for an
                outage that was only a timeout under load: the slot would stay taken).

        Raises:
            RedisBusy: no connection came free within the pool's bounded wait.
            RedisDown: Redis did not answer (or did not a moment ago).
        """
        if skip_if_down and self._down_until and self._clock() < self._down_until:
            raise RedisDown("Redis was unreachable a moment ago")
        try:
            result = await operation(self.client)
        except RedisBusy:
            raise
        except self._timeouts as error:
            self._down_until = self._clock() + DOWN_RETRY_S
            raise RedisDown(f"Redis did not answer in time: {type(error).__name__}") from error
        except self._outages as error:
            raise RedisDown(f"Redis is unreachable: {type(error).__name__}") from error
        self._down_until = 0.0
        return result

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
