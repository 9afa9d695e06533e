"""Per-key rate limits: the limiter against memory and real Redis, and through two workers."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from fusion_engine.config import RateLimitSpec
from fusion_engine.errors import RateLimitedError
from fusion_engine.ratelimit import (
    LimitStore,
    MemoryLimitStore,
    RateLimiter,
    RedisLimitStore,
)
from fusion_engine.redis_client import RedisDown, SharedRedis
from fusion_engine.testing import Reply

from .helpers import REDIS_URL, ROOT, FakeInThread, GatewayProcess, free_port, require_redis

#: Fresh keys per run: counts in the shared Redis outlive a test run by up to two minutes.
ALPHA, BETA = f"alpha-{uuid.uuid4().hex}", f"beta-{uuid.uuid4().hex}"
#: Limits are per key name: names of this run's own, so other runs sharing Redis never count.
ALPHA_NAME, BETA_NAME = f"a{uuid.uuid4().hex[:24]}", f"b{uuid.uuid4().hex[:24]}"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    """The same limiter tests against the in-process store and a real Redis."""
    if request.param == "memory":
        yield MemoryLimitStore()
        return
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    yield RedisLimitStore(redis)
    await redis.aclose()


def fresh_identity() -> str:
    """A key name of this test's own (counts in the shared Redis outlive a run)."""
    return f"t{uuid.uuid4().hex[:24]}"


async def test_requests_per_minute(store: LimitStore) -> None:
    """The limit+1-th request in a minute is refused with the seconds left in the window."""
    now = [60.0 * 20_000 + 20]  # 20 s into a window
    limiter = RateLimiter(RateLimitSpec(requests_per_minute=3), store, clock=lambda: now[0])
    who = fresh_identity()
    for _ in range(3):
        await limiter.check_request(who)
    with pytest.raises(RateLimitedError) as raised:
        await limiter.check_request(who)
    assert raised.value.retry_after == pytest.approx(40.0)
    assert raised.value.status_code == 429
    await limiter.check_request(fresh_identity())  # another key is not affected
    now[0] += 40.0  # the next window
    await limiter.check_request(who)


async def test_concurrent_fusions(store: LimitStore) -> None:
    """At most N slots at once per key; a released slot can be taken again."""
    limiter = RateLimiter(RateLimitSpec(concurrent_fusions=2), store)
    who = fresh_identity()
    async with await limiter.fusion_slot(who), await limiter.fusion_slot(who):
        with pytest.raises(RateLimitedError):
            await limiter.fusion_slot(who)
    async with await limiter.fusion_slot(who):
        pass


async def test_slot_is_released_when_the_work_fails(store: LimitStore) -> None:
    """An exception inside the slot still gives it back."""
    limiter = RateLimiter(RateLimitSpec(concurrent_fusions=1), store)
    who = fresh_identity()
    with pytest.raises(ValueError, match="boom"):
        async with await limiter.fusion_slot(who):
            raise ValueError("boom")
    async with await limiter.fusion_slot(who):
        pass


async def test_unlimited_by_default() -> None:
    """Without limits nothing is counted or refused."""
    limiter = RateLimiter(RateLimitSpec(), MemoryLimitStore())
    assert not limiter.enabled
    for _ in range(100):
        await limiter.check_request("x")


@pytest.mark.parametrize("fail_open", [True, False])
async def test_unreachable_redis_fails_open_or_closed(fail_open: bool) -> None:
    """With Redis down, requests pass when failing open and get 429 when failing closed."""
    port = free_port()
    redis = SharedRedis.connect(f"redis://127.0.0.1:{port}/0")
    store = RedisLimitStore(redis)
    limiter = RateLimiter(
        RateLimitSpec(requests_per_minute=1, concurrent_fusions=1), store, fail_open=fail_open
    )
    try:
        if fail_open:
            await limiter.check_request("x")
            async with await limiter.fusion_slot("x"):
                pass
        else:
            with pytest.raises(RateLimitedError, match="cannot be checked"):
                await limiter.check_request("x")
    finally:
        await redis.aclose()


async def test_a_lease_is_given_back_right_after_a_redis_timeout() -> None:
    """Found in review: one Redis timeout on the worker's shared client made it report Redis
    down for a second without trying, so a fusion ending in that second kept its slot for the
    lease's 15 minutes and its key's next fusion was refused. Giving a lease back always tries."""
    require_redis()
    import redis.exceptions

    shared = SharedRedis.connect(REDIS_URL)
    limiter = RateLimiter(RateLimitSpec(concurrent_fusions=1), RedisLimitStore(shared))
    who = fresh_identity()

    async def timing_out(client: object) -> None:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    try:
        lease = await limiter.fusion_slot(who)
        with pytest.raises(RedisDown):
            await shared.run(timing_out)  # another request's operation timed out meanwhile
        await lease.release()
        assert await shared.client.zcard(f"fusion:concurrency:{who}") == 0
        await asyncio.sleep(1.1)  # past the outage memory: the key's next fusion is let in
        await (await limiter.fusion_slot(who)).release()
    finally:
        await shared.client.delete(f"fusion:concurrency:{who}")
        await shared.aclose()


# --- through the gateway, two workers sharing Redis ----------------------------------------------


@pytest.fixture(scope="module")
def limited_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, FakeInThread]]:
    require_redis()
    config = tmp_path_factory.mktemp("config") / "gateway.yaml"
    config.write_text(
        (ROOT / "tests" / "e2e_files" / "gateway.yaml").read_text()
        + "rate_limit: {requests_per_minute: 5, concurrent_fusions: 1}\n"
    )
    upstream = FakeInThread()
    gateway = GatewayProcess(
        {
            "OPENROUTER_API_KEY": "x",
            "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "FUSION_SERVER_API_KEYS": f"{ALPHA_NAME}:{ALPHA},{BETA_NAME}:{BETA}",
            "FUSION_PANELS_DIR": str(ROOT / "tests" / "e2e_files" / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(config),
            "FUSION_CACHE": "off",
            "REDIS_URL": REDIS_URL,
        },
        workers=2,
    )
    yield gateway, upstream
    gateway.stop()
    upstream.close()


def post(gateway: GatewayProcess, key: str, question: str) -> httpx.Response:
    """A fused request on a fresh connection (so either worker may serve it)."""
    body = {"model": "fusion/trio", "messages": [{"role": "user", "content": question}]}
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30,
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip


def test_per_minute_limit_is_shared_by_the_workers(
    limited_gateway: tuple[GatewayProcess, FakeInThread],
) -> None:
    """Five requests pass, the sixth (from either worker) is a 429 with Retry-After."""
    gateway, upstream = limited_gateway
    upstream.fake.reset()
    key = ALPHA
    statuses = [post(gateway, key, f"q{i}").status_code for i in range(5)]
    if 429 in statuses:  # a minute boundary fell inside the burst: the window restarted
        statuses = [post(gateway, key, f"r{i}").status_code for i in range(5)]
    assert statuses == [200] * 5
    refused = post(gateway, key, "one too many")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert ALPHA not in refused.text


def test_concurrent_fusion_limit(limited_gateway: tuple[GatewayProcess, FakeInThread]) -> None:
    """While one slow fusion runs for a key, a second one for that key is refused."""
    gateway, upstream = limited_gateway
    upstream.fake.reset()
    for member in ("e2e/alpha", "e2e/beta", "e2e/gamma"):
        upstream.fake.script(member, Reply(text="slow", delay_s=1.0))
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(post(gateway, BETA, "slow").status_code))
    first.start()
    asyncio.run(asyncio.sleep(0.3))
    second = post(gateway, BETA, "meanwhile")
    first.join(30)
    assert results == [200]
    assert second.status_code == 429
    assert "at once" in second.json()["error"]["message"]


def test_config_reads_rate_limit_fields(tmp_path: Path) -> None:
    """rate_limit.fail_open is part of the gateway config, true by default."""
    assert RateLimitSpec().fail_open is True
    assert RateLimitSpec(fail_open=False).fail_open is False
