"""What the routes share: the engine, cache, metrics and settings of one worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from litestar import Request

from ..cache import ResultCache, build_backend
from ..config import ResolvedConfig
from ..costs import PriceBook, enforce
from ..engine import FusionEngine
from ..panels import Panel
from ..plan import FusionPlan
from ..ratelimit import LimitStore, MemoryLimitStore, RateLimiter, RedisLimitStore
from ..results import PanelResponse
from ..settings import Settings
from .metrics import Metrics

log = structlog.get_logger("fusion_engine.upstream")
#: How often learnt prices are pooled through Redis.
PRICE_SYNC_S = 10.0


class Gateway:
    """Per-worker state, built by ``create_app`` and reached from routes via ``gateway_of``."""

    def __init__(self, settings: Settings, engine: FusionEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
        self.refresh_labels()
        engine.on_call = self.observe_call
        backend = build_backend(
            settings.cache_backend,
            redis_url=settings.redis_url,
            max_mb=settings.cache_max_mb,
            on_error=self.metrics.cache_lookup("error").inc,
        )
        self.cache = ResultCache(
            backend,
            settings.cache_ttl_s,
            on_lookup=lambda result: self.metrics.cache_lookup(result).inc(),
        )
        spec = engine.config.gateway.rate_limit
        store: LimitStore = (
            RedisLimitStore(settings.redis_url) if settings.redis_url else MemoryLimitStore()
        )
        self.limiter = RateLimiter(spec, store, fail_open=spec.fail_open)
        self._limit_store = store
        self.prices = PriceBook()
        self._price_redis = _redis_client(settings.redis_url) if settings.redis_url else None
        self.started_at = int(time.time())
        #: Set when the worker is shutting down, so /ready stops attracting traffic.
        self.draining = False

    @property
    def config(self) -> ResolvedConfig:
        """The resolved gateway config."""
        return self.engine.config

    def within_budget(self, plan: FusionPlan) -> FusionPlan:
        """The plan under the lower of the gateway's and the panel's cost ceilings (trimmed or
        refused as the gateway config says)."""
        gateway = self.config.gateway
        ceilings = [c for c in (gateway.max_cost_usd, plan.panel.max_cost_usd) if c is not None]
        ceiling = min(ceilings) if ceilings else None
        return enforce(plan, ceiling, self.prices.prices, policy=gateway.cost_policy)

    def refresh_labels(self) -> None:
        """Metric labels follow the loaded panels (after start and after every reload)."""
        self.metrics.known_panels = set(self.engine.panels)
        self.metrics.known_models = configured_models(self.engine.panels.values())

    def observe_call(self, response: PanelResponse) -> None:
        """Every member and judge call: metrics, learnt prices, and one debug log line."""
        self.metrics.observe_call(response)
        self.prices.learn(response)
        log.debug(
            "upstream_call",
            model=response.model,
            ok=response.ok,
            error_kind=response.error_kind,
            latency_ms=round(response.latency_ms, 1),
            tokens_in=response.tokens_in,
            tokens_out=response.tokens_out,
            cost_usd=response.cost_usd,
            attempts=response.attempts,
        )

    async def share_prices(self, interval_s: float = PRICE_SYNC_S) -> None:
        """Forever: pool learnt prices with the other workers and replicas through Redis."""
        if self._price_redis is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.prices.sync(self._price_redis)
            except Exception as error:  # fail open: local prices keep working
                log.warning("price_sync_failed", error=type(error).__name__)

    async def aclose(self) -> None:
        """Stop serving: close the cache and the upstream session."""
        self.draining = True
        if self._price_redis is not None:
            await self._price_redis.aclose()
        await self.cache.aclose()
        if isinstance(self._limit_store, RedisLimitStore):
            await self._limit_store.aclose()
        await self.engine.aclose()


def _redis_client(url: str) -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def configured_models(panels: Any) -> set[str]:
    """Every member, judge and fallback judge slug of ``panels``."""
    models: set[str] = set()
    panel: Panel
    for panel in panels:
        models.update(member.slug for member in panel.models)
        models.add(panel.judge_model)
        models.update(panel.judge_fallback_models)
    return models


def gateway_of(request: Request[Any, Any, Any]) -> Gateway:
    """The Gateway of the app serving ``request``."""
    gateway: Gateway = request.app.state.gateway
    return gateway
