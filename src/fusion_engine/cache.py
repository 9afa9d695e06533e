"""The result cache: Redis, a bounded in-memory LRU, or off; key derivation and policy.

The key hashes a ``CacheMaterial``: the whole resolved panel struct (every field, its name
included, so an ad-hoc panel never shares a named panel's entries), the providers, the judge
template's *text*, the conversation, tools and generation parameters, and a scope (the caller,
or ``shared``) — so editing a panel or a template never serves a stale answer, and no caller
learns what another asked. The policy (``Panel.cache``) caches only deterministic requests by
default. Values are msgspec-encoded FusionResults. Redis failures fail open: the request is
served uncached, the failure is counted, and logged at most once per interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec
import structlog

from .config import Provider
from .errors import FusionError
from .panels import Panel
from .plan import FusionPlan
from .protocol import GenerationParams, Message
from .redis_client import RedisBusy, SharedRedis, busy_error
from .results import FusionResult

log = structlog.get_logger("fusion_engine.cache")

#: What a lookup did, as the ``X-Fusion-Cache`` header and the metric label say it.
CacheResult = Literal["hit", "miss", "bypass", "off"]
#: v2: the key covers the whole panel struct and a scope (v1 entries are never read again).
KEY_PREFIX = "fusion:result:v2:"
#: The scope of entries every caller shares (``cache_scope: shared``).
SHARED_SCOPE = "shared"
ERROR_LOG_INTERVAL_S = 30.0

_encode_result = msgspec.msgpack.Encoder().encode
_decode_result = msgspec.msgpack.Decoder(FusionResult).decode
_canonical = msgspec.json.Encoder(order="sorted").encode


class CacheBackend(Protocol):
    """Where cached bytes live."""

    @property
    def name(self) -> Literal["redis", "memory", "off"]:
        """Which kind of store this is."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` (absent, expired, or the store is unreachable)."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store ``value`` for ``ttl_s`` seconds (best effort)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class OffCache:
    """No cache at all."""

    name: Literal["off"] = "off"

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


class MemoryCache:
    """An in-process LRU bounded by the total size of its values, with per-entry expiry."""

    name: Literal["memory"] = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_bytes = max_bytes
        self._size = 0
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self._size += len(value)
        while self._size > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def delete(self, key: str) -> bool:
        """Forget ``key``; whether it held a live entry."""
        present = await self.get(key) is not None
        if present:
            self._drop(key)
        return present

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._size -= len(value)

    @property
    def size_bytes(self) -> int:
        """Total size of the stored values."""
        return self._size

    async def aclose(self) -> None:
        self._entries.clear()
        self._size = 0


class RedisCache:
    """Redis through the worker's shared client; a failure is counted and rate-logged, and the
    request goes on uncached — except when the pool is merely busy: a read then refuses the
    request (429, retry shortly) instead of paying for a fusion the cache may hold.

    No timeout of its own: the shared client bounds the wait for a pooled connection and,
    separately, each exchange with Redis (see ``redis_client``).
    """

    name: Literal["redis"] = "redis"

    def __init__(self, redis: SharedRedis, *, on_error: Callable[[], None] | None = None) -> None:
        self._redis = redis
        self._on_error = on_error or (lambda: None)
        self._last_logged = -ERROR_LOG_INTERVAL_S

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.run(lambda client: client.get(key))
        except RedisBusy as error:  # back-pressure, never a bypass
            self._failed("get", error)
            raise busy_error("read its cache") from error
        except Exception as error:  # fail open: Redis down means "not cached"
            self._failed("get", error)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._redis.run(lambda client: client.set(key, value, ex=ttl_s))
        except Exception as error:
            self._failed("set", error)

    def _failed(self, operation: str, error: BaseException) -> None:
        self._on_error()
        now = time.monotonic()
        if now - self._last_logged >= ERROR_LOG_INTERVAL_S:
            self._last_logged = now
            log.warning("cache_unavailable", operation=operation, error=type(error).__name__)

    async def aclose(self) -> None:
        """Nothing to close: the shared client belongs to the gateway."""


class ProviderRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a call goes, as far as the answer is concerned (never the provider's key)."""

    name: str
    kind: str
    base_url: str


class CacheMaterial(msgspec.Struct, frozen=True, kw_only=True):
    """Exactly what a cache key hashes: everything that can change a fused answer, and whose
    entry it is."""

    #: The caller's identity (``cache_scope: key``) or ``shared``.
    scope: str
    #: The whole resolved panel, name included (after any request overrides and trimming).
    panel: Panel
    member_providers: list[ProviderRef]
    judge_provider: ProviderRef
    #: The judge template's text (an edited template never serves the old text's answers).
    template: str
    web_search: bool
    conversation: list[Message]
    #: Sampling, tools, limits and the unknown fields forwarded to every call.
    params: GenerationParams


def cache_material(plan: FusionPlan, scope: str) -> CacheMaterial:
    """What the key of ``plan``'s answer is made of, for callers in ``scope`` (pure)."""
    return CacheMaterial(
        scope=scope,
        panel=plan.panel,
        member_providers=[_provider_ref(p) for p in plan.member_providers],
        judge_provider=_provider_ref(plan.judge_provider),
        template=plan.template,
        web_search=plan.web_search,
        conversation=plan.conversation,
        params=plan.params,
    )


def _provider_ref(provider: Provider) -> ProviderRef:
    return ProviderRef(provider.name, provider.kind, provider.base_url)


def cache_key(material: CacheMaterial) -> str:
    """A hash of ``material``, every field of every struct in it (pure)."""
    return KEY_PREFIX + hashlib.sha256(_canonical(material)).hexdigest()


def scope_for(identity: str, cache_scope: Literal["key", "shared"]) -> str:
    """The cache scope of a caller: its own identity, or ``shared`` when the operator chose so."""
    return identity if cache_scope == "key" else SHARED_SCOPE


def deterministic(plan: FusionPlan) -> bool:
    """Whether asking again would sample the same answers: every member's effective
    temperature is 0 (a member's own value beats the request's), or it is seeded (the
    request's ``seed`` or the member's own)."""
    params = plan.params
    for member in plan.panel.models:
        temperature = member.temperature if member.temperature is not None else params.temperature
        seeded = member.seed is not None or params.seed is not None
        if temperature != 0 and not seeded:
            return False
    return True


def cache_policy(plan: FusionPlan, cache_control: str | None) -> tuple[bool, bool]:
    """Whether to read and whether to write the cache for this request (pure).

    The panel's ``cache``: ``never`` never uses it; ``auto`` uses it only for deterministic
    requests (``deterministic``) and not for web-search answers, which are fresh by nature;
    ``always`` uses it regardless. ``Cache-Control: no-cache`` skips the read, ``no-store``
    the write.
    """
    mode = plan.panel.cache_mode
    if mode == "never" or (mode == "auto" and (plan.web_search or not deterministic(plan))):
        return False, False
    directives = {part.strip().lower() for part in (cache_control or "").split(",")}
    return "no-cache" not in directives, "no-store" not in directives


class CacheTicket(msgspec.Struct, kw_only=True):
    """One request's dealings with the cache, from ``begin`` to ``finish`` or ``abandon``.

    ``result`` is set on a hit. On a miss this request leads: identical requests arriving
    meanwhile wait for its result instead of fusing again.
    """

    outcome: CacheResult
    result: FusionResult | None = None
    key: str | None = None
    write: bool = False
    leader: asyncio.Future[FusionResult] | None = None


class ResultCache:
    """FusionResults in a backend, with identical concurrent fusions coalesced in-process.

    Args:
        backend: where values live.
        ttl_s: entry lifetime.
        on_lookup: called with each lookup's result (``hit``/``miss``/``bypass``/``off``).
    """

    def __init__(
        self,
        backend: CacheBackend,
        ttl_s: int,
        *,
        on_lookup: Callable[[CacheResult], None] | None = None,
    ) -> None:
        self.backend = backend
        self._ttl_s = ttl_s
        self._on_lookup = on_lookup or (lambda result: None)
        self._inflight: dict[str, asyncio.Future[FusionResult]] = {}

    async def run(
        self,
        plan: FusionPlan,
        fuse: Callable[[], Awaitable[FusionResult]],
        *,
        cache_control: str | None = None,
        scope: str,
    ) -> tuple[FusionResult, CacheResult]:
        """The cached result for ``plan`` in ``scope``, or ``fuse()``'s, stored for next time.

        ``scope`` is whose entries these are: the caller's identity, or ``SHARED_SCOPE``
        (see ``scope_for``).
        """
        ticket = await self.begin(plan, cache_control, scope=scope)
        if ticket.result is not None:
            return ticket.result, ticket.outcome
        try:
            result = await fuse()
        except BaseException as error:
            self.abandon(ticket, error)
            raise
        await self.finish(ticket, result)
        return result, ticket.outcome

    async def begin(
        self, plan: FusionPlan, cache_control: str | None = None, *, scope: str
    ) -> CacheTicket:
        """Look ``plan`` up in ``scope``: a hit (stored, or an identical fusion finishing
        meanwhile), or a miss that makes this request the leader for its key; ``bypass`` when
        the policy says this request is not cached."""
        read, write = cache_policy(plan, cache_control)
        if self.backend.name == "off" or not (read or write):
            ticket = CacheTicket(outcome="off" if self.backend.name == "off" else "bypass")
            self._on_lookup(ticket.outcome)
            return ticket
        key = cache_key(cache_material(plan, scope))
        if read:
            hit = await self._read(key)
            if hit is not None:
                self._on_lookup("hit")
                return CacheTicket(outcome="hit", result=hit, key=key)
        self._on_lookup("miss")
        leader: asyncio.Future[FusionResult] = asyncio.get_running_loop().create_future()
        self._inflight.setdefault(key, leader)
        return CacheTicket(outcome="miss", key=key, write=write, leader=leader)

    async def _read(self, key: str) -> FusionResult | None:
        stored = await self.lookup(key)
        if stored is not None:
            return stored
        running = self._inflight.get(key)
        if running is None:
            return None
        try:
            result = await asyncio.shield(running)
        except _LeaderGone:
            return None  # the leading request left: this one runs its own fusion
        return msgspec.structs.replace(result, cached=True)

    async def finish(self, ticket: CacheTicket, result: FusionResult) -> None:
        """Hand a leader's result to its followers and store it (when allowed)."""
        self._release(ticket)
        if ticket.leader is not None and not ticket.leader.done():
            ticket.leader.set_result(result)
        if ticket.write and ticket.key is not None:
            await self.store(ticket.key, result)

    def abandon(self, ticket: CacheTicket, error: BaseException) -> None:
        """The leader failed: a fusion error fails followers alike (no second spend); a leader
        that was cancelled (its client left) lets each follower run its own fusion."""
        self._release(ticket)
        if ticket.leader is not None and not ticket.leader.done():
            shared = error if isinstance(error, FusionError) else _LeaderGone()
            ticket.leader.set_exception(shared)
            ticket.leader.exception()  # mark retrieved: no "never retrieved" warning

    def _release(self, ticket: CacheTicket) -> None:
        if ticket.key is not None and self._inflight.get(ticket.key) is ticket.leader:
            del self._inflight[ticket.key]

    async def lookup(self, key: str) -> FusionResult | None:
        """The stored result for ``key``, marked ``cached``; a corrupt entry counts as absent."""
        raw = await self.backend.get(key)
        if raw is None:
            return None
        try:
            return msgspec.structs.replace(_decode_result(raw), cached=True)
        except msgspec.DecodeError:
            log.warning("cache_entry_unreadable", key=key)
            return None

    async def store(self, key: str, result: FusionResult) -> None:
        """Store ``result`` under ``key``; degraded answers are not worth keeping."""
        if result.degraded:
            return
        await self.backend.set(key, _encode_result(result), self._ttl_s)

    async def aclose(self) -> None:
        """Close the backend."""
        await self.backend.aclose()


class _LeaderGone(Exception):
    """The request that was running a coalesced fusion failed or left."""


def build_backend(
    kind: Literal["redis", "memory", "off"],
    *,
    redis: SharedRedis | None,
    max_mb: int,
    on_error: Callable[[], None] | None = None,
) -> CacheBackend:
    """The backend the settings ask for (Redis through the worker's shared client)."""
    if kind == "redis" and redis is not None:
        return RedisCache(redis, on_error=on_error)
    if kind == "off":
        return OffCache()
    return MemoryCache(max_mb * 1024 * 1024)
