"""The result cache: the same tests against the in-memory LRU and a real Redis, key derivation,
policy, coalescing, and failing open when Redis goes away."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest

from fusion_engine.cache import (
    CacheBackend,
    MemoryCache,
    OffCache,
    RedisCache,
    ResultCache,
    cache_key,
    cache_material,
    cache_policy,
)
from fusion_engine.config import GatewayConfig, resolve_config
from fusion_engine.errors import PanelFailedError
from fusion_engine.panels import Panel, PanelMember
from fusion_engine.plan import FusionPlan, make_plan
from fusion_engine.protocol import GenerationParams
from fusion_engine.redis_client import SharedRedis
from fusion_engine.results import FusionResult, PanelResponse

from . import helpers
from .helpers import REDIS_URL, require_redis

CONFIG = resolve_config(GatewayConfig(), {"OPENROUTER_API_KEY": "k"})
TEMPLATES = {"default": "Judge well.", "tool_synthesis": "Pick the next tool call."}
#: The caller these tests cache for (tests/test_cache_policy.py covers scopes).
SCOPE = "test-caller"


def plan_for(
    question: str = "q",
    *,
    members: tuple[str, ...] = ("a/one", "b/two"),
    templates: dict[str, str] | None = None,
    params: GenerationParams | None = None,
    **panel_options: object,
) -> FusionPlan:
    """A plan; its panel caches ``always`` unless told otherwise (these tests are about the
    store, tests/test_cache_policy.py about the policy)."""
    panel_options.setdefault("cache", "always")
    panel = Panel(
        name=str(panel_options.pop("name", "p")),
        models=[PanelMember(slug=slug) for slug in members],
        judge_model="j/judge",
        **panel_options,  # type: ignore[arg-type]
    )
    return make_plan(
        [{"role": "user", "content": question}],
        panel=panel,
        panels={},
        templates=templates or TEMPLATES,
        config=CONFIG,
        params=params,
    )


def key_of(plan: FusionPlan, scope: str = SCOPE) -> str:
    return cache_key(cache_material(plan, scope))


def result(answer: str = "fused", **fields: object) -> FusionResult:
    member = PanelResponse(index=0, model="a/one", content="x", cost_usd=0.001)
    return FusionResult(answer=answer, panel_responses=[member], total_cost=0.001, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    """Each cache test runs against the in-memory LRU and a real Redis."""
    if request.param == "memory":
        yield MemoryCache(max_bytes=1 << 20)
        return
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    yield RedisCache(redis)
    await redis.aclose()


# --- key and policy (pure) -------------------------------------------------------------------


def test_key_is_stable_for_the_same_request() -> None:
    """Two identical requests share a key; the panel's name and the scope count."""
    assert key_of(plan_for()) == key_of(plan_for())
    assert key_of(plan_for(name="x")) != key_of(plan_for(name="y"))
    assert key_of(plan_for(), "caller-a") != key_of(plan_for(), "caller-b")


@pytest.mark.parametrize(
    "changed",
    [
        lambda: plan_for("another question"),
        lambda: plan_for(members=("a/one", "c/three")),
        lambda: plan_for(members=("b/two", "a/one")),
        lambda: plan_for(templates={"default": "Judge differently.", "tool_synthesis": "x"}),
        lambda: plan_for(params=GenerationParams(temperature=0.1)),
        lambda: plan_for(
            params=GenerationParams(tools=[{"type": "function", "function": {"name": "f"}}])
        ),
        lambda: plan_for(params=GenerationParams(extra={"logit_bias": {"1": 1}})),
        lambda: plan_for(judge_fallback_models=["j/backup"]),
        lambda: plan_for(judge_temperature=0.0),
    ],
)
def test_key_changes_with_whatever_changes_the_answer(changed: object) -> None:
    """Question, members, order, template text, parameters, tools and judge settings all count."""
    assert callable(changed)
    assert key_of(changed()) != key_of(plan_for())


def test_policy() -> None:
    """Cache-Control and the panel's cache/web_search settings decide reads and writes."""
    assert cache_policy(plan_for(), None) == (True, True)
    assert cache_policy(plan_for(), "no-cache") == (False, True)
    assert cache_policy(plan_for(), "max-age=0, no-store") == (True, False)
    assert cache_policy(plan_for(cache=False), None) == (False, False)
    assert cache_policy(plan_for(cache="never"), None) == (False, False)
    seeded = GenerationParams(seed=1)
    assert cache_policy(plan_for(web_search=True, cache="auto", params=seeded), None) == (
        False, False,
    )  # fmt: skip
    assert cache_policy(plan_for(web_search=True, cache=True), None) == (True, True)


# --- backends ----------------------------------------------------------------------------------


async def test_round_trip_and_miss(backend: CacheBackend) -> None:
    """A stored value comes back; an unknown key is a miss."""
    key = f"fusion:test:{uuid.uuid4().hex}"
    assert await backend.get(key) is None
    await backend.set(key, b"value", 60)
    assert await backend.get(key) == b"value"


async def test_entries_expire() -> None:
    """Memory entries expire after their TTL (on the injected clock)."""
    now = [100.0]
    cache = MemoryCache(max_bytes=1000, clock=lambda: now[0])
    await cache.set("k", b"v", 10)
    now[0] += 9.9
    assert await cache.get("k") == b"v"
    now[0] += 0.2
    assert await cache.get("k") is None
    assert cache.size_bytes == 0


async def test_redis_entries_carry_the_ttl() -> None:
    """Redis entries are written with FUSION_CACHE_TTL_S as their expiry."""
    require_redis()
    from redis.asyncio import Redis

    redis = SharedRedis.connect(REDIS_URL)
    cache = ResultCache(RedisCache(redis), ttl_s=123)
    plan = plan_for(f"ttl {uuid.uuid4().hex}")
    await cache.run(plan, lambda: _resolved(result()), scope=SCOPE)
    client = Redis.from_url(REDIS_URL)
    try:
        assert 120 <= await client.ttl(key_of(plan)) <= 123
    finally:
        await client.aclose()
        await redis.aclose()


async def test_memory_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    """Past its byte limit the LRU drops the entry used longest ago."""
    cache = MemoryCache(max_bytes=30)
    await cache.set("a", b"x" * 10, 60)
    await cache.set("b", b"x" * 10, 60)
    await cache.set("c", b"x" * 10, 60)
    await cache.get("a")  # a is now the most recent
    await cache.set("d", b"x" * 10, 60)
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert cache.size_bytes <= 30
    await cache.set("huge", b"x" * 31, 60)
    assert await cache.get("huge") is None


# --- ResultCache ---------------------------------------------------------------------------------


async def _resolved(value: FusionResult) -> FusionResult:
    return value


async def test_miss_then_hit(backend: CacheBackend) -> None:
    """The first request fuses and stores; the second is served from the cache, marked cached."""
    outcomes: list[str] = []
    cache = ResultCache(backend, ttl_s=60, on_lookup=outcomes.append)
    plan = plan_for(f"hit {uuid.uuid4().hex}")
    calls = 0

    async def fuse() -> FusionResult:
        nonlocal calls
        calls += 1
        return result()

    first, first_outcome = await cache.run(plan, fuse, scope=SCOPE)
    second, second_outcome = await cache.run(plan, fuse, scope=SCOPE)
    assert (first_outcome, second_outcome) == ("miss", "hit")
    assert calls == 1
    assert second.answer == first.answer and second.cached and not first.cached
    assert second.panel_responses == first.panel_responses
    assert outcomes == ["miss", "hit"]


async def test_no_cache_and_no_store(backend: CacheBackend) -> None:
    """no-store fuses without storing; no-cache fuses again and refreshes the entry."""
    cache = ResultCache(backend, ttl_s=60)
    plan = plan_for(f"cc {uuid.uuid4().hex}")
    await cache.run(plan, lambda: _resolved(result("first")), cache_control="no-store", scope=SCOPE)
    assert await cache.lookup(key_of(plan)) is None
    await cache.run(plan, lambda: _resolved(result("second")), scope=SCOPE)
    refreshed, outcome = await cache.run(
        plan, lambda: _resolved(result("third")), cache_control="no-cache", scope=SCOPE
    )
    assert (refreshed.answer, outcome) == ("third", "miss")
    stored = await cache.lookup(key_of(plan))
    assert stored is not None and stored.answer == "third"


async def test_bypass_and_off() -> None:
    """A panel with cache: false bypasses; the off backend says off."""
    bypassed = ResultCache(MemoryCache(1 << 20), ttl_s=60)
    _, outcome = await bypassed.run(plan_for(cache=False), lambda: _resolved(result()), scope=SCOPE)
    assert outcome == "bypass"
    _, outcome = await bypassed.run(plan_for(cache=False), lambda: _resolved(result()), scope=SCOPE)
    assert outcome == "bypass"
    _, off = await ResultCache(OffCache(), ttl_s=60).run(
        plan_for(), lambda: _resolved(result()), scope=SCOPE
    )
    assert off == "off"


async def test_degraded_results_are_not_stored(backend: CacheBackend) -> None:
    """A stand-in answer (judge failed) is served but not kept."""
    cache = ResultCache(backend, ttl_s=60)
    plan = plan_for(f"degraded {uuid.uuid4().hex}")
    await cache.run(plan, lambda: _resolved(result(degraded="judge_failed")), scope=SCOPE)
    assert await cache.lookup(key_of(plan)) is None


async def test_corrupt_entry_counts_as_a_miss(backend: CacheBackend) -> None:
    """Garbage under a key is ignored, not an error."""
    cache = ResultCache(backend, ttl_s=60)
    plan = plan_for(f"corrupt {uuid.uuid4().hex}")
    await backend.set(key_of(plan), b"\x00not msgpack", 60)
    fused, outcome = await cache.run(plan, lambda: _resolved(result("fresh")), scope=SCOPE)
    assert (fused.answer, outcome) == ("fresh", "miss")


async def run_at_once(
    cache: ResultCache, plan: FusionPlan, requests: int, finish: Callable[[], FusionResult]
) -> tuple[int, list[Any]]:
    """``requests`` identical requests at once, whose fusion waits until all are in, then returns
    ``finish()`` (or raises what it raises): how many fusions ran, and what each request got
    (an exception included)."""
    calls = 0
    release = asyncio.Event()

    async def slow_fuse() -> FusionResult:
        nonlocal calls
        calls += 1
        await release.wait()
        return finish()

    tasks = [asyncio.create_task(cache.run(plan, slow_fuse, scope=SCOPE)) for _ in range(requests)]
    await asyncio.sleep(0.05)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    return calls, outcomes


async def test_identical_concurrent_requests_are_coalesced(backend: CacheBackend) -> None:
    """Five identical requests at once run one fusion; the others get its result."""
    cache = ResultCache(backend, ttl_s=60)
    plan = plan_for(f"coalesce {uuid.uuid4().hex}")
    calls, outcomes = await run_at_once(cache, plan, 5, lambda: result("shared"))
    assert calls == 1
    assert not [error for error in outcomes if isinstance(error, BaseException)], outcomes
    assert {fused.answer for fused, _ in outcomes} == {"shared"}
    assert sorted(outcome for _, outcome in outcomes) == ["hit", "hit", "hit", "hit", "miss"]


async def test_failed_leader_fails_followers_without_a_second_spend() -> None:
    """If the coalesced fusion fails, the waiting requests get the same error."""
    cache = ResultCache(MemoryCache(1 << 20), ttl_s=60)

    def fail() -> FusionResult:
        raise PanelFailedError("every panel member failed")

    calls, outcomes = await run_at_once(cache, plan_for(), 3, fail)
    assert calls == 1
    assert all(isinstance(outcome, PanelFailedError) for outcome in outcomes)


async def test_cancelled_leader_lets_a_follower_run() -> None:
    """If the leading request is cancelled (client gone), a waiting request fuses itself."""
    cache = ResultCache(MemoryCache(1 << 20), ttl_s=60)
    plan = plan_for()
    started = asyncio.Event()

    async def never() -> FusionResult:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    leader = asyncio.create_task(cache.run(plan, never, scope=SCOPE))
    await started.wait()
    follower = asyncio.create_task(cache.run(plan, lambda: _resolved(result("own")), scope=SCOPE))
    await asyncio.sleep(0.02)
    leader.cancel()
    fused, outcome = await asyncio.wait_for(follower, 5)
    assert (fused.answer, outcome) == ("own", "miss")


# --- Redis going away ------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, on a free port (the shared one is never touched)."""
    with helpers.private_redis() as (process, url):
        yield process, url


async def test_redis_stopped_mid_test_fails_open(
    private_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    """Redis dies: lookups and stores fail quietly, requests are still served, errors counted."""
    process, url = private_redis
    errors = 0

    def count() -> None:
        nonlocal errors
        errors += 1

    redis = SharedRedis.connect(url)
    cache = ResultCache(RedisCache(redis, on_error=count), ttl_s=60)
    plan = plan_for("fail open")
    await cache.run(plan, lambda: _resolved(result("before")), scope=SCOPE)
    cached, outcome = await cache.run(plan, lambda: _resolved(result("unused")), scope=SCOPE)
    assert outcome == "hit" and cached.answer == "before"
    process.kill()
    process.wait(5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    served, outcome = await cache.run(plan, lambda: _resolved(result("after")), scope=SCOPE)
    assert (served.answer, outcome) == ("after", "miss")
    assert errors >= 2  # the failed read and the failed write
    assert loop.time() - started < 2  # short timeouts, not a hang
    await redis.aclose()


def test_results_survive_the_cache_encoding() -> None:
    """What the cache stores decodes to the same FusionResult (tool calls included)."""
    from fusion_engine.protocol import FunctionCall, ToolCall

    original = result(
        tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))]
    )
    encoded = msgspec.msgpack.encode(original)
    assert msgspec.msgpack.decode(encoded, type=FusionResult) == original
