"""Redis under load: pool exhaustion is back-pressure, never a bypass.

A real `fusion serve` on the shared Redis (db 15, key names of this run's own) takes 600
concurrent requests from aiohttp on 127.0.0.1: the request rate limit, the concurrent-fusion
limit and the cache must all hold. Then the shared client's busy/down distinction alone.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fusion_engine.cache import RedisCache
from fusion_engine.config import RateLimitSpec
from fusion_engine.errors import RateLimitedError
from fusion_engine.ratelimit import RateLimiter, RedisLimitStore
from fusion_engine.redis_client import RedisBusy, RedisDown, SharedRedis
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    REDIS_URL,
    ROOT,
    FakeInThread,
    GatewayProcess,
    free_port,
    gateway_env,
    private_redis,
    require_redis,
)

LOAD = 600
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")


def limited_config(directory: Path, rate_limit: str) -> Path:
    config = directory / "gateway.yaml"
    config.write_text(
        (ROOT / "tests" / "e2e_files" / "gateway.yaml").read_text() + f"rate_limit: {rate_limit}\n"
    )
    return config


def start_gateway(fake: FakeUpstream, key: str, config: Path, **extra: str) -> GatewayProcess:
    return GatewayProcess(gateway_env(fake, key, config=config, REDIS_URL=REDIS_URL, **extra))


async def _burst(
    url: str, body: dict[str, Any], key: str, count: int = LOAD
) -> list[tuple[int, str | None, str]]:
    """``count`` identical POSTs, all in flight at once, each on its own connection."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one() -> tuple[int, str | None, str]:
            async with session.post(url, json=body, headers=headers) as reply:
                return reply.status, reply.headers.get("Retry-After"), await reply.text()

        return await asyncio.gather(*(one() for _ in range(count)))


def burst(
    gateway: GatewayProcess, body: dict[str, Any], key: str
) -> list[tuple[int, str | None, str]]:
    """(status, Retry-After, body) of each of ``LOAD`` concurrent chat completions."""
    url = f"{gateway.base_url}/v1/chat/completions"
    return asyncio.run(asyncio.wait_for(_burst(url, body, key), 180))


def chat(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fusion/trio", "messages": [{"role": "user", "content": question}], **extra}


def named_key() -> tuple[str, str]:
    """A key name and key of this run's own (limits in the shared Redis are per name)."""
    name = f"load{uuid.uuid4().hex[:20]}"
    return name, f"{name}:key-{uuid.uuid4().hex}"


@pytest.fixture
def fake(upstream: FakeInThread) -> FakeUpstream:
    require_redis()
    upstream.fake.reset()
    return upstream.fake


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("load")
    return {
        "rpm": _write(directory, "rpm", "{requests_per_minute: 50}"),
        "slots": _write(directory, "slots", "{concurrent_fusions: 1}"),
        "none": _write(directory, "none", "{}"),
    }


def _write(directory: Path, name: str, rate_limit: str) -> Path:
    sub = directory / name
    sub.mkdir()
    return limited_config(sub, rate_limit)


def _wait_for_a_fresh_minute() -> None:
    """Start a burst early in a rate-limit window, so that all of it counts in one window."""
    into_window = time.time() % 60
    if into_window > 40:
        time.sleep(60 - into_window + 0.2)


def test_600_concurrent_requests_against_50_per_minute(
    fake: FakeUpstream, configs: dict[str, Path]
) -> None:
    """Exactly 50 of 600 concurrent requests are accepted; the rest are 429 with Retry-After
    and the rate-limit message (a full Redis pool never lets one through unchecked)."""
    _, key = named_key()
    gateway = start_gateway(fake, key, configs["rpm"])
    try:
        _wait_for_a_fresh_minute()
        replies = burst(gateway, chat("rpm"), key.partition(":")[2])
    finally:
        gateway.stop()
    statuses = [status for status, _, _ in replies]
    accepted = statuses.count(200)
    refused = [(retry, text) for status, retry, text in replies if status == 429]
    assert accepted == 50, f"{accepted} accepted; statuses {sorted(set(statuses))}"
    assert len(refused) == LOAD - 50
    assert all(retry and int(retry) >= 1 for retry, _ in refused)
    assert all("50 requests per minute" in text for _, text in refused)


def test_600_concurrent_fusions_against_one_at_a_time(
    fake: FakeUpstream, configs: dict[str, Path]
) -> None:
    """With ``concurrent_fusions: 1``, 600 concurrent requests never run two fusions at
    once: the slow member's requests never overlap."""
    member_s = 0.3
    for slug in MEMBERS:
        fake.script(slug, Reply(text="slow", delay_s=member_s))
    _, key = named_key()
    secret = key.partition(":")[2]
    gateway = start_gateway(fake, key, configs["slots"])
    try:
        replies = burst(gateway, chat("slots"), secret)
    finally:
        gateway.stop()
    statuses = [status for status, _, _ in replies]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    arrivals = sorted(request.received_at for request in fake.requests_for("e2e/alpha"))
    assert len(arrivals) == statuses.count(200) >= 1
    overlapping = sum(1 for a, b in itertools.pairwise(arrivals) if b - a < member_s)
    assert overlapping == 0, f"{overlapping + 1} fusions overlapped, of {len(arrivals)} run"


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{label}="{value}"' for label, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and wanted in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_600_concurrent_identical_requests_never_fail_a_cache_operation(
    fake: FakeUpstream, configs: dict[str, Path]
) -> None:
    """600 identical cacheable requests at once: every one is answered and no cache
    operation fails (each failed lookup is a paid upstream call when the fusion is over)."""
    _, key = named_key()
    secret = key.partition(":")[2]
    gateway = start_gateway(fake, key, configs["none"], FUSION_CACHE="redis")
    try:
        body = chat(f"cache {uuid.uuid4().hex}", temperature=0, seed=1)
        replies = burst(gateway, body, secret)
        metrics = asyncio.run(_get(f"{gateway.base_url}/metrics"))
    finally:
        gateway.stop()
    statuses = [status for status, _, _ in replies]
    assert statuses.count(200) == LOAD, sorted(set(statuses))
    assert _metric(metrics, "fusion_cache_requests_total", result="error") == 0
    assert _metric(metrics, "fusion_cache_requests_total", result="hit") >= LOAD - 10


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return await reply.text()


# --- the shared client alone -----------------------------------------------------------------


async def test_a_full_pool_is_busy_not_down() -> None:
    """When every pooled connection is held, the bounded wait ends in RedisBusy (back-pressure);
    the rate limiter refuses (429) rather than failing open."""
    require_redis()
    redis = SharedRedis.connect(REDIS_URL, max_connections=1, pool_wait_s=0.05)
    blocker = f"test:load:{uuid.uuid4().hex}"
    try:
        holding = asyncio.ensure_future(redis.run(lambda client: client.blpop([blocker], 1)))
        await asyncio.sleep(0.1)
        with pytest.raises(RedisBusy):
            await redis.run(lambda client: client.get("x"))
        limiter = RateLimiter(
            RateLimitSpec(requests_per_minute=5), RedisLimitStore(redis), fail_open=True
        )
        with pytest.raises(RateLimitedError, match="too busy"):
            await limiter.check_request(f"t{uuid.uuid4().hex[:20]}")
        await holding
    finally:
        await redis.aclose()


async def test_a_busy_pool_refuses_a_cache_read_instead_of_missing() -> None:
    """Found in review: the cache took a full pool for an outage and read "not cached", so each
    lookup under load became a paid fusion. A busy read is a 429 (retry shortly) now; a Redis
    that is down still reads as a miss (fail open)."""
    require_redis()
    redis = SharedRedis.connect(REDIS_URL, max_connections=1, pool_wait_s=0.05)
    errors: list[int] = []
    cache = RedisCache(redis, on_error=lambda: errors.append(1))
    key, blocker = f"test:load:{uuid.uuid4().hex}", f"test:load:{uuid.uuid4().hex}"
    try:
        await cache.set(key, b"cached answer", 60)
        holding = asyncio.ensure_future(redis.run(lambda client: client.blpop([blocker], 1)))
        await asyncio.sleep(0.1)
        with pytest.raises(RateLimitedError, match="too busy to read its cache") as raised:
            await cache.get(key)
        assert raised.value.retry_after == 1 and errors == [1]
        await holding
        assert await cache.get(key) == b"cached answer"
    finally:
        await redis.client.delete(key)
        await redis.aclose()
    down = SharedRedis.connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await RedisCache(down).get(key) is None
    finally:
        await down.aclose()


async def test_a_refused_connection_is_down_and_fails_open() -> None:
    """Nothing listening: RedisDown at once, tried again on the next call (a restarted Redis
    is used again at once); the limiter fails open."""
    redis = SharedRedis.connect(f"redis://127.0.0.1:{free_port()}/0")
    calls = 0

    async def get(client: Any) -> Any:
        nonlocal calls
        calls += 1
        return await client.get("x")

    try:
        for _ in range(2):
            with pytest.raises(RedisDown, match="unreachable"):
                await redis.run(get)
        assert calls == 2
        limiter = RateLimiter(RateLimitSpec(requests_per_minute=1), RedisLimitStore(redis))
        await limiter.check_request("x")
        await limiter.check_request("x")  # over the limit, but Redis is down: fail open
    finally:
        await redis.aclose()


async def test_a_hung_redis_is_down_and_remembered() -> None:
    """Redis that stops answering: RedisDown after the socket timeout, then reported down
    without trying for a moment (a hang costs later requests nothing), then tried again."""
    now = [100.0]
    with private_redis() as (process, url):
        connected = SharedRedis.connect(url, op_timeout_s=0.2)
        redis = SharedRedis(connected.client, clock=lambda: now[0])
        calls = 0

        async def get(client: Any) -> Any:
            nonlocal calls
            calls += 1
            return await client.get("x")

        try:
            await redis.run(get)
            process.send_signal(signal.SIGSTOP)
            with pytest.raises(RedisDown, match="in time"):
                await redis.run(get)
            with pytest.raises(RedisDown, match="a moment ago"):
                await redis.run(get)
            assert calls == 2
            process.send_signal(signal.SIGCONT)
            now[0] += 1.5
            assert await redis.run(get) is None
            assert calls == 3
        finally:
            process.send_signal(signal.SIGCONT)
            await redis.aclose()
