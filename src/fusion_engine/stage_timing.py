"""Where a fused reply's time went: the members, the judge, and the gateway itself.

Sent as ``Server-Timing: members;dur=…, judge;dur=…, gateway;dur=…`` on non-streamed fused
replies, so "is the gateway slow or the model?" is answered from the outside. Pure.
"""

from __future__ import annotations

import msgspec

from .results import FusionResult


class StageTimes(msgspec.Struct, frozen=True):
    """Milliseconds of one fused request, by stage."""

    #: The fan-out: from the first member call until the panel has answered (0 on a cache hit).
    members_ms: float
    #: Every judge call, one after another (fallbacks included; 0 when no judge was asked).
    judge_ms: float
    #: The rest of the request: admission, planning, cache, rendering.
    gateway_ms: float


def stage_times(result: FusionResult, elapsed_ms: float) -> StageTimes:
    """The stages of a request that took ``elapsed_ms`` in the gateway and answered ``result``.

    A cached result's own timings describe the request that fused it, not this one.
    """
    if result.cached:
        return StageTimes(0.0, 0.0, max(elapsed_ms, 0.0))
    judge_ms = sum(attempt.latency_ms for attempt in result.judge_attempts)
    fusion_ms = result.total_latency_ms
    return StageTimes(
        members_ms=max(fusion_ms - judge_ms, 0.0),
        judge_ms=judge_ms,
        gateway_ms=max(elapsed_ms - fusion_ms, 0.0),
    )


def server_timing(times: StageTimes) -> str:
    """The ``Server-Timing`` header value."""
    return (
        f"members;dur={times.members_ms:.1f}, judge;dur={times.judge_ms:.1f}, "
        f"gateway;dur={times.gateway_ms:.1f}"
    )
