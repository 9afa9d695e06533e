"""What the routes share: the engine, cache, metrics and settings of one worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from litestar import Request

from ..cache import ResultCache, build_backend
from ..config import ResolvedConfig
from ..costs import PriceBook, Pricing, enforce, estimate
from ..engine import FusionEngine
from ..keys import key_ring
from ..panels import Panel
from ..plan import FusionPlan
from ..ratelimit import LimitStore, MemoryLimitStore, RateLimiter, RedisLimitStore
from ..redis_client import SharedRedis
from ..response_store import ResponseStore
from ..results import PanelResponse
from ..settings import Settings
from ..spend import Ledger, charge_call
from ..spend_store import MemorySpendStore, RedisSpendStore, SpendStore
from .metrics import Metrics
from .model_list import ModelListCache

log = structlog.get_logger("fusion_engine.upstream")
#: How often learnt prices are pooled through Redis.
PRICE_SYNC_S = 10.0
#: One price sync may take this long; a slower one is abandoned (its calls are kept).
PRICE_SYNC_TIMEOUT_S = 5.0


class Gateway:
    """Per-worker state, built by ``create_app`` and reached from routes via ``gateway_of``."""

    def __init__(self, settings: Settings, engine: FusionEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
        self.refresh_labels()
        engine.on_call = self.observe_call
        #: The worker's one Redis client (``start`` connects it, in the app's lifespan).
        self.redis: SharedRedis | None = None
        self.prices = PriceBook()
        config = engine.config
        #: The accepted keys and each key name's policy.
        self.keys = key_ring(settings.server_api_keys, config.keys, config.gateway.rate_limit)
        self.cache, self.limiter, self.ledger = self._stores(None)
        #: Stored Responses API responses (on the shared Redis once ``start`` connects it).
        self.responses = self._response_store(None)
        for name in self.keys.names:
            budget = self.keys.policy(name).budget
            if budget is not None:
                self.metrics.key_budget.labels(name).set(budget.limit)
        self.started_at = int(time.time())
        #: The passthrough provider's models, fetched when first listed and kept 10 minutes.
        self.provider_models = ModelListCache()
        #: Set when the worker is shutting down, so /ready stops attracting traffic.
        self.draining = False

    def _stores(self, redis: SharedRedis | None) -> tuple[ResultCache, RateLimiter, Ledger]:
        """The cache, the rate limiter and the spend ledger, on ``redis`` when there is one,
        else in memory."""
        settings = self.settings
        backend = build_backend(
            settings.cache_backend,
            redis=redis,
            max_mb=settings.cache_max_mb,
            on_error=self.metrics.cache_lookup("error").inc,
        )
        cache = ResultCache(
            backend,
            settings.cache_ttl_s,
            on_lookup=lambda result: self.metrics.cache_lookup(result).inc(),
        )
        spec = self.engine.config.gateway.rate_limit
        store: LimitStore = RedisLimitStore(redis) if redis is not None else MemoryLimitStore()
        spend: SpendStore = RedisSpendStore(redis) if redis is not None else MemorySpendStore()
        ledger = Ledger(
            spend,
            Pricing(self.engine.config.gateway.prices, self.prices),
            on_charge=self.metrics.observe_spend,
            on_period_spend=lambda name, usd: self.metrics.key_period_spend.labels(name).set(usd),
        )
        return cache, RateLimiter(spec, store, fail_open=spec.fail_open), ledger

    def _response_store(self, redis: SharedRedis | None) -> ResponseStore:
        settings = self.settings
        return ResponseStore(
            redis, ttl_s=settings.responses_ttl_s, max_bytes=settings.cache_max_mb * 1024 * 1024
        )

    def start(self) -> None:
        """Connect the worker's one Redis client, shared by the cache, the rate limits and the
        learnt prices. Called in the lifespan: after the fork, on the loop that serves."""
        if self.settings.redis_url and self.redis is None:
            self.redis = SharedRedis.connect(self.settings.redis_url)
            self.cache, self.limiter, self.ledger = self._stores(self.redis)
            self.responses = self._response_store(self.redis)

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

    def estimate_cost(self, plan: FusionPlan) -> float | None:
        """What ``plan`` is expected to cost at the learnt prices (the panel's own estimate
        where a price is missing; ``None`` when nothing is known)."""
        return estimate(plan, self.prices.prices).total

    def refresh_labels(self) -> None:
        """Metric labels follow the loaded panels (after start and after every reload)."""
        self.metrics.known_panels = set(self.engine.panels)
        self.metrics.known_models = configured_models(self.engine.panels.values())

    def observe_call(self, response: PanelResponse) -> None:
        """Every member and judge call: metrics, learnt prices, the caller's spend, and one
        debug log line."""
        self.metrics.observe_call(response)
        self.prices.learn(response)
        charge_call(response)
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
        """Forever: pool learnt prices with the other workers and replicas through Redis
        (first at start, so a new worker estimates with everyone's prices at once)."""
        if self.redis is None:
            return
        while True:
            await self.sync_prices()
            await asyncio.sleep(interval_s)

    async def sync_prices(self, timeout_s: float = PRICE_SYNC_TIMEOUT_S) -> None:
        """One bounded price sync; a failure is logged and local prices keep working."""
        if self.redis is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.prices.sync(self.redis.client, self.metrics.known_models)
        except Exception as error:  # fail open: local prices keep working
            log.warning("price_sync_failed", error=type(error).__name__)

    async def aclose(self) -> None:
        """Stop serving: close the cache, the Redis client and the upstream session."""
        self.draining = True
        await self.ledger.flush()  # the charges still queued, while Redis is connected
        await self.cache.aclose()
        await self.responses.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.aclose()


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
