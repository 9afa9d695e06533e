"""Per-request accounting: one log line and the request metrics for every routed request.

An ASGI middleware times the request to its last byte (streams included), reads the status
from the response start, and takes what the handler learnt (panel, cost, cache result) from
``RequestFacts`` in the scope state. Log lines carry the request id through structlog's context.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from ..cache import CacheResult
from ..results import FusionResult
from ..spend import Tab
from ..stage_timing import server_timing, stage_times
from .metrics import NO_KEY, Metrics
from .request_id import request_id

log = structlog.get_logger("fusion_engine.server")
_FACTS = "fusion_facts"


class RequestFacts(msgspec.Struct, kw_only=True):
    """What a handler learnt about its request, for the log line and the metrics."""

    panel: str | None = None
    #: The caller's key name, once admission has authenticated it.
    key: str | None = None
    cache: str | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    degraded: str | None = None
    #: The members' agreement, for fresh fusions only (a cache hit was counted when fused).
    agreement: float | None = None
    #: How long its upstream calls took, when known (fused, non-streamed passthrough).
    upstream_ms: float | None = None
    #: What the request spends, settled (charged, its hold released) when it ends.
    tab: Tab | None = None
    #: When the request reached the gateway (``time.perf_counter``), for its stage timings.
    started: float = msgspec.field(default_factory=time.perf_counter)
    #: The request's ``fusion <panel>`` span (``trace_fusion``), which ``record_result`` fills.
    fusion_span: tracing.TraceSpan = tracing.NO_SPAN


def facts_of(request: Request[Any, Any, Any]) -> RequestFacts:
    """This request's facts, created on first use."""
    state = request.scope.setdefault("state", {})
    facts: RequestFacts = state.setdefault(_FACTS, RequestFacts())
    return facts


def trace_fusion(request: Request[Any, Any, Any], panel: str) -> tracing.TraceSpan:
    """Start the request's ``fusion <panel>`` span (under its server span); ``record_result``
    records the fusion's figures on it. The caller ends it (``with``, or ``follow`` a stream)."""
    span = tracing.fusion(panel)
    facts_of(request).fusion_span = span
    return span


def request_observer(metrics: Metrics) -> Any:
    """Litestar middleware factory recording every routed request."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def observed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            scope.setdefault("state", {})[_FACTS] = RequestFacts(started=started)
            status = 500
            structlog.contextvars.bind_contextvars(request_id=request_id(scope))

            async def watch(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            metrics.inflight.inc()
            span = tracing.server(scope["method"], scope["path"], scope["headers"])
            try:
                with span.activate():
                    await app(scope, receive, watch)
            except BaseException as error:
                span.fail(error)
                raise
            finally:
                metrics.inflight.dec()
                route = _account(metrics, scope, status, time.perf_counter() - started)
                span.record_http(route, status, scope["state"][_FACTS].key)
                span.end()
                tab = scope["state"][_FACTS].tab
                if tab is not None:
                    # After the accounting, which times the reply, not this write. Until the
                    # charge is written the request's hold stands in for it, so the next
                    # request's budget check is never short.
                    await tab.settle()
                structlog.contextvars.unbind_contextvars("request_id")

        return observed

    return middleware


def _account(metrics: Metrics, scope: Scope, status: int, seconds: float) -> str:
    """Count and log the request; its route."""
    facts: RequestFacts = scope.get("state", {}).get(_FACTS) or RequestFacts()
    handler = scope.get("route_handler")
    route = min(handler.paths) if handler is not None else scope.get("path", "-")
    upstream_s = facts.upstream_ms / 1000 if facts.upstream_ms is not None else None
    metrics.observe_request(
        route, metrics.panel_label(facts.panel), status, seconds, facts.agreement, upstream_s,
        key=facts.key or NO_KEY,
    )  # fmt: skip
    log.info(
        "request",
        method=scope.get("method"),
        route=route,
        status=status,
        latency_ms=round(seconds * 1000, 2),
        panel=facts.panel,
        key=facts.key,
        cache=facts.cache,
        cost_usd=facts.cost_usd,
        tokens_in=facts.tokens_in,
        tokens_out=facts.tokens_out,
        degraded=facts.degraded,
    )
    return str(route)


def record_result(facts: RequestFacts, result: FusionResult, outcome: CacheResult) -> None:
    """Note a fusion's figures for the request's log line and its fusion span."""
    facts.cache = outcome
    facts.fusion_span.record_fusion(result, outcome)
    facts.cost_usd = result.total_cost
    facts.tokens_in, facts.tokens_out = result.tokens_in, result.tokens_out
    facts.degraded = result.degraded
    facts.upstream_ms = 0.0 if result.cached else result.total_latency_ms
    if result.agreement is not None and not result.cached:
        facts.agreement = result.agreement.score


def server_timing_now(facts: RequestFacts, result: FusionResult) -> str:
    """The ``Server-Timing`` header of a non-streamed fused reply about to be sent: the
    request's time so far, split by stage."""
    elapsed_ms = (time.perf_counter() - facts.started) * 1000
    return server_timing(stage_times(result, elapsed_ms))
