"""Stored Responses API responses: the same tests in memory and on a real Redis; ownership,
expiry, deletion, and Redis going away."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from fusion_engine.errors import FusionError
from fusion_engine.redis_client import SharedRedis
from fusion_engine.response_store import (
    ResponseStore,
    ResponseStoreUnavailableError,
    StoredResponse,
    previous_not_found,
    response_not_found,
)
from fusion_engine.responses_api import new_response_id

from . import helpers
from .helpers import REDIS_URL, require_redis


def stored(text: str = "hi") -> StoredResponse:
    return StoredResponse(
        # A client's metadata and tools come back as sent, integers past 64 bits included.
        response=msgspec.Raw(
            msgspec.json.encode(
                {"id": "resp_x", "object": "response", "marker": text, "big": 2**70}
            )
        ),
        conversation=[{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        memory = ResponseStore(None, ttl_s=60, max_bytes=1 << 20)
        yield memory
        await memory.aclose()
        return
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    yield ResponseStore(redis, ttl_s=60, max_bytes=1 << 20)
    await redis.aclose()


async def test_a_saved_response_loads_for_its_owner_only(store: ResponseStore) -> None:
    response_id = new_response_id()
    await store.save("alice", response_id, stored("one"))
    assert await store.load("alice", response_id) == stored("one")
    assert await store.load("bob", response_id) is None
    assert await store.load("alice", new_response_id()) is None


async def test_delete_forgets_and_says_whether_there_was_one(store: ResponseStore) -> None:
    response_id = new_response_id()
    await store.save("alice", response_id, stored())
    assert await store.delete("bob", response_id) is False
    assert await store.delete("alice", response_id) is True
    assert await store.load("alice", response_id) is None
    assert await store.delete("alice", response_id) is False


@pytest.mark.parametrize(
    "foreign", ["resp_", "chatcmpl-1", "resp_../../x", "resp_" + "a" * 200, ""]
)
async def test_ids_this_gateway_never_hands_out_are_not_found(
    store: ResponseStore, foreign: str
) -> None:
    assert await store.load("alice", foreign) is None
    assert await store.delete("alice", foreign) is False


async def test_redis_entries_carry_the_ttl() -> None:
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    store = ResponseStore(redis, ttl_s=1234, max_bytes=1)
    response_id = new_response_id()
    await store.save("alice", response_id, stored())
    ttl = await redis.client.ttl(f"fusion:response:v1:alice:{response_id}")
    assert 1200 < ttl <= 1234
    await store.delete("alice", response_id)
    await redis.aclose()


async def test_the_memory_store_is_bounded() -> None:
    store = ResponseStore(None, ttl_s=60, max_bytes=4000)
    ids = [new_response_id() for _ in range(100)]
    for response_id in ids:
        await store.save("alice", response_id, stored("x" * 100))
    assert await store.load("alice", ids[0]) is None  # evicted
    assert await store.load("alice", ids[-1]) is not None


@pytest.fixture
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with helpers.private_redis() as (process, url):
        yield process, url


async def test_redis_down_is_a_503_on_read_and_quiet_on_write(
    private_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = private_redis
    redis = SharedRedis.connect(url)
    store = ResponseStore(redis, ttl_s=60, max_bytes=1)
    response_id = new_response_id()
    await store.save("alice", response_id, stored())
    process.kill()
    process.wait(5)
    await store.save("alice", new_response_id(), stored())  # logged, not raised
    with pytest.raises(ResponseStoreUnavailableError) as raised:
        await store.load("alice", response_id)
    assert raised.value.status_code == 503
    with pytest.raises(ResponseStoreUnavailableError):
        await store.delete("alice", response_id)
    await redis.aclose()


def test_the_not_found_errors() -> None:
    previous: FusionError = previous_not_found("resp_1")
    assert (previous.status_code, previous.code, previous.param) == (
        404,
        "previous_response_not_found",
        "previous_response_id",
    )
    missing = response_not_found("resp_1")
    assert (missing.status_code, missing.code) == (404, "not_found")
