"""Learnt prices in Redis: keys expire, a sync reads only the models this worker prices, and
a worker stops within seconds on SIGTERM however many price keys Redis holds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from fusion_engine.costs import MAX_MODELS, PRICE_KEY, PRICE_TTL_S, PriceBook
from fusion_engine.results import PanelResponse
from fusion_engine.testing import FakeUpstream

from .helpers import (
    REDIS_URL,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    private_redis,
    require_redis,
)

FOREIGN_KEYS = 20_000


def call(model: str, cost: float = 0.002) -> PanelResponse:
    return PanelResponse(index=0, model=model, content="x", tokens_in=100, tokens_out=100,
                         cost_usd=cost)  # fmt: skip


async def test_price_keys_expire_and_only_wanted_models_are_read() -> None:
    """Written totals carry a TTL (renewed on write); a sync reads back the configured models
    and the ones this worker learnt, never another model's key."""
    require_redis()
    from redis.asyncio import Redis

    run = uuid.uuid4().hex
    mine, configured, foreign = f"test/mine-{run}", f"test/panel-{run}", f"test/adhoc-{run}"
    redis = Redis.from_url(REDIS_URL)
    try:
        for model in (configured, foreign):
            await redis.hset(PRICE_KEY + model, mapping={"calls": 1, "cost_usd": 0.01,
                                                         "tokens_in": 50, "tokens_out": 50})  # fmt: skip
        book = PriceBook()
        book.learn(call(mine))
        await book.sync(redis, [configured])
        assert set(book.prices) == {mine, configured}
        assert book.prices[configured].calls == 1
        assert 0 < await redis.ttl(PRICE_KEY + mine) <= PRICE_TTL_S
        await redis.expire(PRICE_KEY + mine, 5)
        book.learn(call(mine))
        await book.sync(redis, [configured])
        assert await redis.ttl(PRICE_KEY + mine) > 5  # renewed by the write
        assert book.prices[mine].calls == 2
    finally:
        await redis.delete(*(PRICE_KEY + m for m in (mine, configured, foreign)))
        await redis.aclose()


def test_a_worker_keeps_prices_for_a_bounded_number_of_models() -> None:
    """Random ad-hoc slugs cannot grow a worker's price book without end: the least recently
    learnt model goes first."""
    book = PriceBook()
    for index in range(MAX_MODELS + 10):
        book.learn(call(f"adhoc/{index}"))
    book.learn(call("adhoc/10"))  # learnt again: now the most recent
    assert len(book.prices) == MAX_MODELS
    assert "adhoc/0" not in book.prices and "adhoc/10" in book.prices
    assert f"adhoc/{MAX_MODELS + 9}" in book.prices


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (gunicorn's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def _commands(redis: SyncRedis, name: str) -> int:
    stats = redis.info("commandstats").get(f"cmdstat_{name}")
    return int(stats["calls"]) if stats else 0


def test_sigterm_during_a_price_sync_exits_within_seconds(upstream: FakeInThread) -> None:
    """With 20,000 learnt-price keys in Redis, a worker told to stop while it syncs prices
    exits within a few seconds, and a sync reads only the few models it prices."""
    fake: FakeUpstream = upstream.fake
    with private_redis() as (_, url):
        client = SyncRedis.from_url(url)
        with client.pipeline(transaction=False) as pipe:
            for index in range(FOREIGN_KEYS):
                pipe.hset(f"{PRICE_KEY}adhoc/{index}", mapping={"calls": 1, "cost_usd": 0.01,
                                                                 "tokens_in": 5, "tokens_out": 5})  # fmt: skip
            pipe.execute()
        gateway = GatewayProcess(gateway_env(fake, "sync-key", REDIS_URL=url))
        try:
            # A sync has begun once the worker reads a price back.
            deadline = time.monotonic() + 30
            while _commands(client, "hgetall") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _commands(client, "hgetall") > 0, "no price sync started"
            workers = _children(gateway.process.pid)
            gateway.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                gateway.process.wait(30)
            except subprocess.TimeoutExpired:
                for pid in workers:  # a stuck worker would outlive its killed master
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                pytest.fail(f"still running 30 s after SIGTERM:\n{gateway.output()[-2000:]}")
            elapsed = time.monotonic() - started
            assert elapsed < 5, f"took {elapsed:.1f} s to stop"
            assert _commands(client, "hgetall") < 100  # the panels' models, not every key
        finally:
            gateway.stop()
            client.close()


async def test_shutdown_abandons_a_task_that_swallows_its_cancel() -> None:
    """The lifespan's cleanup is bounded: a background task that ignores cancellation (as
    redis-py can) is left behind, and the gateway is still closed."""
    import asyncio

    from fusion_engine.server.app import _shut_down

    class Closing:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    done = False

    async def stubborn() -> None:
        while not done:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    gateway = Closing()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _shut_down(gateway, [task], budget_s=0.2)  # type: ignore[arg-type]
    assert loop.time() - started < 1
    assert gateway.closed and not task.done()
    done = True
    task.cancel()
    await task
