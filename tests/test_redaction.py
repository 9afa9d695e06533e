"""The provider key never leaves the gateway, and redaction never garbles text (issue 15, item 9).

A provider once put the key into a field of a 200 body (``tool_calls[0].type = "Bearer <key>"``);
msgspec's decode error quotes the offending value, and that message reached the 502 body,
``fusion.members[].error``, the cache and the log. Driven through a real `fusion serve` with the
fake upstream and a private Redis as the cache, plus unit tests of the scrubbing itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import redis

from fusion_engine.config import Provider
from fusion_engine.errors import UpstreamError
from fusion_engine.provider_errors import MIN_SECRET_CHARS, redact, scrub
from fusion_engine.settings import Secret
from fusion_engine.testing import FakeUpstream, Reply
from fusion_engine.upstream import UpstreamClient

from .helpers import (
    FakeInThread,
    GatewayProcess,
    gateway_env,
    private_redis,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

PROVIDER_KEY = "sk-or-v1-redaction-test-key-0123456789"
CLIENT_KEY = "client-key"
ALPHA, BETA, GAMMA, JUDGE = "e2e/alpha", "e2e/beta", "e2e/gamma", "e2e/judge"
PLAIN = "vendor/plain-model"
#: Tests after the first must not be answered from the cache the first one filled.
FRESH = {"Cache-Control": "no-cache, no-store"}
#: Deterministic, so the fused answer is cached under any cache policy.
ASK: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Call the tool."}],
    "temperature": 0,
    "seed": 7,
}


def echoing_body(model: str, key: str) -> dict[str, Any]:
    """A 200 completion with the key where a tool call's type belongs (an invalid value)."""
    call = {"id": "call_1", "type": f"Bearer {key}", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return {"id": "gen-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [choice]}  # fmt: skip


@pytest.fixture(scope="module")
def cache_redis() -> Iterator[str]:
    with private_redis() as (_, url):
        yield url


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread, cache_redis: str) -> Iterator[GatewayProcess]:
    env = gateway_env(
        upstream.fake, CLIENT_KEY, provider_key=PROVIDER_KEY, FUSION_CACHE="redis",
        REDIS_URL=cache_redis, FUSION_LOG_LEVEL="debug",
    )  # fmt: skip
    process = GatewayProcess(env)
    yield process
    process.stop()


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as session:
        yield session


def cached_values(url: str) -> list[bytes]:
    with redis.Redis.from_url(url) as store:
        return [store.dump(key) or b"" for key in store.scan_iter()]


def test_a_key_in_a_malformed_member_answer_reaches_no_reply_cache_or_log(
    http: httpx.Client, fake: FakeUpstream, gateway: GatewayProcess, cache_redis: str
) -> None:
    """One member echoes the key in a malformed body: its error says so without the key, the
    fused reply is served and cached, and neither the reply, the cache nor the log holds it."""
    fake.script(ALPHA, Reply(body=echoing_body(ALPHA, PROVIDER_KEY)))
    fake.script(JUDGE, Reply(text="The fused answer."))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", **ASK})
    assert reply.status_code == 200, reply.text
    error = reply.json()["fusion"]["members"][0]["error"]
    assert "malformed response" in error and "Bearer ***" in error
    assert PROVIDER_KEY not in reply.text
    values = cached_values(cache_redis)
    assert values, "the fused answer was not cached, so the cache was not checked"
    assert not [value for value in values if PROVIDER_KEY.encode() in value]
    assert PROVIDER_KEY not in gateway.output()


def test_a_key_in_every_members_malformed_answer_stays_out_of_the_502_and_the_log(
    http: httpx.Client, fake: FakeUpstream, gateway: GatewayProcess
) -> None:
    for slug in (ALPHA, BETA, GAMMA):
        fake.script(slug, Reply(body=echoing_body(slug, PROVIDER_KEY)))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", **ASK}, headers=FRESH)
    assert reply.status_code == 502, reply.text
    assert "malformed response" in reply.json()["error"]["message"]
    assert PROVIDER_KEY not in reply.text
    log = gateway.output()
    assert "request_failed" in log and "malformed response" in log
    assert PROVIDER_KEY not in log


def test_a_key_in_a_malformed_passthrough_answer_stays_out_of_the_reply(
    http: httpx.Client, fake: FakeUpstream, gateway: GatewayProcess
) -> None:
    fake.script(PLAIN, Reply(body=echoing_body(PLAIN, PROVIDER_KEY)))
    reply = http.post("/v1/chat/completions", json={"model": PLAIN, **ASK})
    assert reply.status_code == 502, reply.text
    assert "malformed response" in reply.json()["error"]["message"]
    assert PROVIDER_KEY not in reply.text
    assert PROVIDER_KEY not in gateway.output()


def test_a_key_echoed_by_a_judge_stays_out_of_the_log(
    http: httpx.Client, fake: FakeUpstream, gateway: GatewayProcess
) -> None:
    """A judge failing with the key in its error message: logged and reported scrubbed."""
    fake.script(JUDGE, Reply(status=400, error_message=f"bad header Bearer {PROVIDER_KEY}"))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", **ASK}, headers=FRESH)
    assert reply.status_code == 200, reply.text
    assert PROVIDER_KEY not in reply.text
    assert "judge_attempt_failed" in gateway.output()
    assert PROVIDER_KEY not in gateway.output()


# --- a one-letter key garbles nothing ---------------------------------------------------------


@pytest.fixture(scope="module")
def short_key_gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    """The README's ``OPENROUTER_API_KEY=x`` for a local server."""
    process = GatewayProcess(gateway_env(upstream.fake, CLIENT_KEY, provider_key="x"))
    yield process
    process.stop()


MESSAGE = "max_tokens exceeds the context window: expected an int, got text (next: xx)"


def test_with_a_one_letter_key_a_passthrough_error_is_relayed_intact(
    short_key_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    fake.script(PLAIN, Reply(status=400, error_shape="openai", error_message=MESSAGE))
    reply = httpx.post(
        f"{short_key_gateway.base_url}/v1/chat/completions",
        json={"model": PLAIN, **ASK},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == MESSAGE


def test_with_a_one_letter_key_a_member_error_is_reported_intact(
    short_key_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    fake.script(ALPHA, Reply(status=400, error_message=MESSAGE))
    reply = httpx.post(
        f"{short_key_gateway.base_url}/v1/chat/completions",
        json={"model": "fusion/trio", **ASK},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["fusion"]["members"][0]["error"].endswith(MESSAGE)


# --- units ------------------------------------------------------------------------------------


def provider(key: str | None) -> Provider:
    return Provider(
        name="p", kind="openai", base_url="http://127.0.0.1:1/v1",
        api_key=Secret(key) if key is not None else None, api_key_env="K",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("x", "x marks the spot: xx"),
        ("1234567", "x marks the spot: xx"),
        (None, "x marks the spot: xx"),
    ],
)
def test_short_or_missing_keys_are_not_searched_for(key: str | None, expected: str) -> None:
    assert scrub("x marks the spot: xx", provider(key)) == expected


def test_keys_of_eight_characters_or_more_are_replaced_everywhere() -> None:
    key = "k" * MIN_SECRET_CHARS
    assert MIN_SECRET_CHARS == 8
    assert scrub(f"a {key} b {key}", provider(key)) == "a *** b ***"
    assert redact(f"{'.' * 495}{key}", provider(key)) == f"{'.' * 495}***"


async def test_a_malformed_answer_echoing_the_key_is_scrubbed_and_not_chained(
    fake: FakeUpstream,
) -> None:
    """The decode error's text is upstream text: scrubbed, and the msgspec error that quotes the
    key is not kept as the cause (a logged traceback would show it)."""
    fake.script("m/echo", Reply(body=echoing_body("m/echo", PROVIDER_KEY)))
    target = msgspec.structs.replace(provider(PROVIDER_KEY), base_url=fake.base_url)
    client = UpstreamClient()
    try:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(target, {"model": "m/echo", "messages": []}, timeout_s=10)
    finally:
        await client.aclose()
    error = raised.value
    assert "malformed response" in error.message and "Bearer ***" in error.message
    assert PROVIDER_KEY not in str(error)
    assert error.__cause__ is None


async def test_a_key_in_the_providers_error_fields_is_scrubbed(fake: FakeUpstream) -> None:
    """type, code and param are relayed by the passthrough, so they are scrubbed like the
    message."""
    echo = f"Bearer {PROVIDER_KEY}"
    body = {"error": {"message": echo, "type": echo, "code": echo, "param": echo}}
    fake.script("m/fields", Reply(status=400, body=body))
    target = msgspec.structs.replace(provider(PROVIDER_KEY), base_url=fake.base_url)
    client = UpstreamClient()
    try:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(target, {"model": "m/fields", "messages": []}, timeout_s=10)
    finally:
        await client.aclose()
    error = raised.value
    assert error.provider_error is not None
    texts = [error.message, error.provider_message, *msgspec.structs.astuple(error.provider_error)]
    assert PROVIDER_KEY not in repr(texts)
    assert error.provider_error.param == "Bearer ***"
