"""Time as retries and deadlines see it, and the retry policy.

Injectable so tests drive deadlines and backoff exactly instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import msgspec


class Clock(Protocol):
    """Time as the retry and deadline logic sees it (injectable so tests are exact)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds on the event loop's monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop."""
        await asyncio.sleep(seconds)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """At most ``max_attempts`` attempts; backoff from ``base_s`` doubling, capped, with jitter."""

    max_attempts: int = 3
    base_s: float = 0.5
    cap_s: float = 4.0
    #: Each backoff is reduced by up to this fraction at random, so clients don't retry in step.
    jitter: float = 0.25

    def backoff(self, retry_number: int, rand: float) -> float:
        """Delay before retry ``retry_number`` (0-based) given a uniform ``rand`` in [0, 1)."""
        return min(self.base_s * 2.0**retry_number, self.cap_s) * (1 - self.jitter * rand)
