"""Running a fusion for an HTTP request: in a task, reporting through a queue, cancellable.

Streaming routes read ``FusionRun`` items as they come. Work a handler awaits before it
answers (a whole fusion, a cache lookup, a stream's first events) goes through
``until_disconnect``: a Litestar handler runs to its end even when the client has gone, so we
watch the ASGI receive channel for ``http.disconnect`` and cancel the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from litestar import Request

from ..cache import CacheTicket, ResultCache
from ..engine import FusionEngine
from ..errors import FusionError
from ..plan import FusionPlan
from ..ratelimit import Lease
from ..results import FusionEvent, FusionResult

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected; the work was cancelled and nobody is listening for a reply."""

    #: Spans record it as a cancellation, not a failure (``tracing.is_cancellation``).
    cancellation = True


class Finished(msgspec.Struct, frozen=True):
    """The fusion's result."""

    result: FusionResult


class Failed(msgspec.Struct, frozen=True):
    """The fusion failed with an error the client should see."""

    error: FusionError


RunItem = FusionEvent | Finished | Failed


class FusionRun:
    """One fusion running in a task; ``next_item`` yields its events, then Finished or Failed.

    With a cache ticket, the result is handed to the cache (and to identical requests waiting
    for it); a failure or cancellation releases them. With a concurrent-fusion ``slot``, the
    run owns it and gives it back when it ends, however it ends — even if the stream that
    reads it never starts (the client left before the first byte).
    """

    def __init__(
        self,
        engine: FusionEngine,
        plan: FusionPlan,
        *,
        stream_judge: bool,
        cache: ResultCache | None = None,
        ticket: CacheTicket | None = None,
        slot: Lease | None = None,
    ) -> None:
        self._queue: asyncio.Queue[RunItem] = asyncio.Queue()
        self._cache, self._ticket = cache, ticket
        self._task = asyncio.create_task(self._run(engine, plan, stream_judge, slot))

    async def _run(
        self, engine: FusionEngine, plan: FusionPlan, stream_judge: bool, slot: Lease | None
    ) -> None:
        try:
            result = await engine.run(
                plan, listener=self._queue.put_nowait, stream_judge=stream_judge
            )
        except BaseException as error:
            if self._cache is not None and self._ticket is not None:
                self._cache.abandon(self._ticket, error)
            if not isinstance(error, FusionError):
                raise
            self._queue.put_nowait(Failed(error))
            return
        finally:
            if slot is not None:
                await slot.release()
        if self._cache is not None and self._ticket is not None:
            await self._cache.finish(self._ticket, result)
        self._queue.put_nowait(Finished(result))

    async def next_burst(self, timeout_s: float) -> list[RunItem]:
        """Every item waiting now, after up to ``timeout_s`` for the first; ``[]`` if none came.

        Streams write a burst in one send: a judge streaming fast costs one write per burst,
        not one per chunk.
        """
        first = await self.next_item(timeout_s)
        if first is None:
            return []
        burst = [first]
        while not self._queue.empty():
            burst.append(self._queue.get_nowait())
        return burst

    async def next_item(self, timeout_s: float) -> RunItem | None:
        """The next item, or ``None`` if nothing came within ``timeout_s``."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            # Not wait_for: on 3.11 it wraps the wait in a task of its own, per item.
            async with asyncio.timeout(timeout_s):
                return await self._queue.get()
        except TimeoutError:
            if self._task.done() and self._task.exception() is not None:
                raise self._task.exception() from None  # type: ignore[misc]
            return None

    async def cancel(self) -> None:
        """Stop the fusion and every upstream call it still has open."""
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until_disconnect(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Raises:
        ClientGone: the client went away and ``work`` was cancelled.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    # A done-callback rather than asyncio.wait: no waiter set or extra futures per request.
    watcher.add_done_callback(lambda _: task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        # Only the work was cancelled (by the watcher: the client left), not this handler.
        if current is None or not current.cancelling():
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
