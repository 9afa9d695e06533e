"""Unit tests for the upstream client (``fusion_engine.upstream``), with aiohttp mocked by
aioresponses and time replaced by a fake clock, so retry and backoff assertions are exact."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import types
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import aiohttp
import aioresponses.core as aioresponses_core
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from multidict import CIMultiDict
from yarl import URL

from fusion_engine.config import Provider
from fusion_engine.errors import ProviderKeyMissingError, UpstreamError, UpstreamTimeoutError
from fusion_engine.protocol import ChatCompletionChunk, ChunkAccumulator
from fusion_engine.provider_errors import error_message, redact, retry_after_seconds
from fusion_engine.provider_requests import APP_TITLE, APP_URL, prepare_body, request_headers
from fusion_engine.settings import Secret
from fusion_engine.sse import EventTooLargeError, iter_sse_batches
from fusion_engine.stream_events import StreamEvent
from fusion_engine.timing import RetryPolicy
from fusion_engine.upstream import UpstreamClient

KEY = "sk-secret-123"
BASE_URL = "http://upstream.test/api/v1"
CHAT_URL = f"{BASE_URL}/chat/completions"
LOCAL_URL = "http://vllm.test/v1"
LOCAL_CHAT_URL = f"{LOCAL_URL}/chat/completions"
BODY: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hi"}],
}

OPENROUTER = Provider(
    name="openrouter",
    kind="openrouter",
    base_url=BASE_URL,
    api_key=Secret(KEY),
    api_key_env="OPENROUTER_API_KEY",
)
OPENAI = Provider(
    name="local", kind="openai", base_url=LOCAL_URL, api_key=Secret(KEY), api_key_env="LOCAL_KEY"
)
#: One request at a time: a slot that is not given back makes the next call hang.
LIMITED = Provider(
    name="limited",
    kind="openrouter",
    base_url=BASE_URL,
    api_key=Secret(KEY),
    api_key_env=None,
    max_concurrency=1,
)


class FakeClock:
    """A clock whose ``sleep`` records the request and advances time instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# aioresponses 0.7.9 builds ``ClientResponse`` without the ``stream_writer`` argument that
# aiohttp 3.14 requires (TypeError on every mocked request); this subclass supplies it.
_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters


class CompatResponse(aiohttp.ClientResponse):
    """``ClientResponse`` that aioresponses can build on this aiohttp version."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class PayloadBreaksResponse(CompatResponse):
    """A response whose body breaks off while being read (truncated Content-Length)."""

    async def read(self) -> bytes:
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    @property  # type: ignore[override]
    def content(self) -> aiohttp.StreamReader:
        return self._broken

    @content.setter
    def content(self, value: aiohttp.StreamReader) -> None:
        """Whatever stream aiohttp sets breaks off before its first byte."""
        value.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))
        self._broken = value


class _TruncatedContent:
    """Stands in for the body stream: yields what it was fed line by line, then the connection drops."""

    def __init__(self) -> None:
        self._data = b""

    def feed_data(self, data: bytes) -> None:
        self._data += data

    def feed_eof(self) -> None:
        pass

    def exception(self) -> BaseException | None:
        return None

    def set_exception(self, *args: Any, **kwargs: Any) -> None:
        pass

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        for line in self._data.splitlines(keepends=True):
            yield line
        raise aiohttp.ClientPayloadError("Response payload is not completed")


class StreamBreaksResponse(CompatResponse):
    """A streamed response whose connection drops after the body it was given."""

    @property  # type: ignore[override]
    def content(self) -> _TruncatedContent:
        return self._truncated

    @content.setter
    def content(self, _reader: Any) -> None:
        self._truncated = _TruncatedContent()


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """aioresponses, made to build responses this aiohttp version accepts."""
    monkeypatch.setattr(aioresponses_core, "ClientResponse", CompatResponse)
    with aioresponses() as mock:
        yield mock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(clock=clock, rand=lambda: 0.0)
    yield upstream
    await upstream.aclose()


def completion(content: str | None = "Hello", **message: Any) -> dict[str, Any]:
    """A non-streaming chat.completion body."""
    return {
        "id": "gen-1",
        "object": "chat.completion",
        "created": 1,
        "model": "openai/gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


def chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    """One chat.completion.chunk with a single choice."""
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse(*events: dict[str, Any] | str, done: bool = True, eol: str = "\n") -> str:
    """An SSE body: one ``data:`` event per item (dicts JSON-encoded), then ``[DONE]``."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}{eol}{eol}" for e in events]
    if done:
        lines.append(f"data: [DONE]{eol}{eol}")
    return "".join(lines)


def requests_to(mocked: aioresponses, url: str = CHAT_URL) -> list[Any]:
    """The POSTs aioresponses saw for ``url``."""
    return mocked.requests.get(("POST", URL(url)), [])


def sent_body(mocked: aioresponses, url: str = CHAT_URL, index: int = 0) -> dict[str, Any]:
    data: bytes = requests_to(mocked, url)[index].kwargs["data"]
    return json.loads(data)  # type: ignore[no-any-return]


async def collect(
    client: UpstreamClient, provider: Provider = OPENROUTER, *, timeout_s: float = 30
) -> list[ChatCompletionChunk]:
    async with aclosing(client.stream(provider, BODY, timeout_s=timeout_s)) as stream:
        return [event.chunk async for batch in stream for event in batch]


# --- retries and backoff -----------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_that_many_seconds(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """A 429 with Retry-After: 2 is retried once after exactly 2 s, then the 200 is returned."""
    mocked.post(
        CHAT_URL,
        status=429,
        payload={"error": {"code": 429, "message": "slow down"}},
        headers={"Retry-After": "2"},
    )
    mocked.post(CHAT_URL, payload=completion("Hello"))
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.completion.choices[0].message.content == "Hello"
    assert reply.attempts == 2
    assert clock.sleeps == [2.0]
    assert reply.latency_ms == pytest.approx(2000.0)
    assert len(requests_to(mocked)) == 2


async def test_retry_after_ms_is_honoured_before_retry_after(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """``retry-after-ms: 1500`` means a 1.5 s wait, and wins over a Retry-After in seconds."""
    mocked.post(CHAT_URL, status=429, headers={"retry-after-ms": "1500", "Retry-After": "9"})
    mocked.post(CHAT_URL, payload=completion())
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert clock.sleeps == [1.5]


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422])
async def test_client_errors_are_not_retried(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses, status: int
) -> None:
    """4xx (except 408/409/429) fail after one request, non-retryable, with the provider's text."""
    mocked.post(
        CHAT_URL,
        status=status,
        repeat=True,
        payload={"error": {"code": status, "message": f"provider says no ({status})"}},
    )
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    error = caught.value
    assert error.status == status
    assert error.retryable is False
    assert error.attempts == 1
    assert f"provider says no ({status})" in error.message
    assert len(requests_to(mocked)) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried_with_doubling_backoff(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses, status: int
) -> None:
    """5xx without Retry-After: 3 attempts in all, sleeping 0.5 s then 1.0 s (no jitter)."""
    mocked.post(
        CHAT_URL,
        status=status,
        repeat=True,
        payload={"error": {"code": status, "message": "upstream trouble"}},
    )
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert len(requests_to(mocked)) == 3
    assert clock.sleeps == [0.5, 1.0]
    assert caught.value.status == status
    assert caught.value.retryable is True
    assert caught.value.attempts == 3
    assert "upstream trouble" in caught.value.message


async def test_jitter_shortens_backoff_by_up_to_a_quarter(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """With rand() == 1.0 and jitter 0.25 the backoffs are 0.375 s and 0.75 s."""
    mocked.post(CHAT_URL, status=503, repeat=True)
    upstream = UpstreamClient(clock=clock, rand=lambda: 1.0)
    try:
        with pytest.raises(UpstreamError):
            await upstream.chat(OPENROUTER, BODY, timeout_s=30)
    finally:
        await upstream.aclose()
    assert clock.sleeps == [0.375, 0.75]


async def test_backoff_is_capped_at_four_seconds(clock: FakeClock, mocked: aioresponses) -> None:
    """With max_attempts=6 the sleeps are 0.5, 1, 2, 4, 4: doubling stops at the 4 s cap."""
    mocked.post(CHAT_URL, status=500, repeat=True)
    upstream = UpstreamClient(retry=RetryPolicy(max_attempts=6), clock=clock, rand=lambda: 0.0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.chat(OPENROUTER, BODY, timeout_s=60)
    finally:
        await upstream.aclose()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert len(requests_to(mocked)) == 6
    assert caught.value.attempts == 6


def test_retry_policy_backoff_formula() -> None:
    """backoff(n, rand) = min(base * 2**n, cap) * (1 - jitter * rand)."""
    policy = RetryPolicy()
    assert [policy.backoff(n, 0.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.backoff(0, 0.5) == pytest.approx(0.5 * (1 - 0.125))
    assert RetryPolicy(jitter=0.0).backoff(1, 0.99) == 1.0


@pytest.mark.parametrize("status", [408, 504, 524, 529])
async def test_other_transient_statuses_are_retried(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses, status: int
) -> None:
    """408 and the gateway/edge 5xx codes are retried like 500."""
    mocked.post(CHAT_URL, status=status)
    mocked.post(CHAT_URL, payload=completion())
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert clock.sleeps == [0.5]


async def test_retry_after_beyond_the_budget_fails_at_once(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """Retry-After: 30 with 5 s left: the 429 is raised right away, without sleeping."""
    mocked.post(
        CHAT_URL,
        status=429,
        headers={"Retry-After": "30"},
        repeat=True,
        payload={"error": {"code": 429, "message": "rate limited"}},
    )
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=5)
    assert clock.sleeps == []
    assert len(requests_to(mocked)) == 1
    assert caught.value.status == 429
    assert caught.value.kind == "rate_limited"
    assert caught.value.retry_after == 30.0


async def test_backoff_beyond_the_remaining_budget_stops_retrying(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """With 1 s of budget, the 0.5 s backoff fits but the next 1.0 s one does not."""
    mocked.post(CHAT_URL, status=502, repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=1.0)
    assert clock.sleeps == [0.5]
    assert len(requests_to(mocked)) == 2
    assert caught.value.attempts == 2


async def test_x_should_retry_false_stops_a_retryable_503(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """``x-should-retry: false`` on a 503 makes it final after one request."""
    mocked.post(CHAT_URL, status=503, headers={"x-should-retry": "false"}, repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.retryable is False
    assert len(requests_to(mocked)) == 1
    assert clock.sleeps == []


async def test_x_should_retry_true_retries_a_409(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """``x-should-retry: true`` on a 409 makes it retried."""
    mocked.post(CHAT_URL, status=409, headers={"X-Should-Retry": "True"})
    mocked.post(CHAT_URL, payload=completion())
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert clock.sleeps == [0.5]


async def test_connection_errors_are_retried_then_raised(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """A refused connection is retried; after 3 failures it is a retryable 'connection' error."""
    mocked.post(CHAT_URL, exception=aiohttp.ClientConnectionError(), repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    error = caught.value
    assert error.kind == "connection"
    assert error.retryable is True
    assert error.status is None
    assert error.attempts == 3
    assert len(requests_to(mocked)) == 3
    assert clock.sleeps == [0.5, 1.0]


async def test_connection_error_then_success(client: UpstreamClient, mocked: aioresponses) -> None:
    """One dropped connection followed by a 200 returns the completion on attempt 2."""
    mocked.post(CHAT_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(CHAT_URL, payload=completion("ok"))
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert reply.completion.choices[0].message.content == "ok"


async def test_no_time_left_raises_a_timeout_without_sending(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A call with no budget raises UpstreamTimeoutError and sends nothing."""
    with pytest.raises(UpstreamTimeoutError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=0)
    assert caught.value.kind == "timeout"
    assert requests_to(mocked) == []


@pytest.mark.parametrize("status", [200, 500])
async def test_a_body_that_breaks_off_is_an_upstream_error(
    client: UpstreamClient, mocked: aioresponses, status: int
) -> None:
    """A body cut off mid-read (200 or error status) becomes a retryable UpstreamError."""
    mocked.post(
        CHAT_URL, status=status, body="{}", response_class=PayloadBreaksResponse, repeat=True
    )
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.kind == "connection"


# --- error bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"error": {"code": 402, "message": "Insufficient credits. Add more"}},
            "Insufficient credits. Add more",
            id="openrouter",
        ),
        pytest.param(
            {
                "error": {
                    "message": "The model 'x' does not exist",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            },
            "The model 'x' does not exist",
            id="openai",
        ),
        pytest.param(
            {
                "object": "error",
                "message": "max_tokens is too large",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "max_tokens is too large",
            id="flat-vllm",
        ),
        pytest.param({"error": "plain string"}, "plain string", id="string-error"),
    ],
)
async def test_error_body_shapes_yield_the_provider_message(
    client: UpstreamClient, mocked: aioresponses, body: dict[str, Any], expected: str
) -> None:
    """Every known error-body shape puts the provider's own message into the UpstreamError."""
    mocked.post(CHAT_URL, status=400, payload=body)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.message == f"openrouter answered 400: {expected}"


async def test_html_error_page_falls_back_to_the_status(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A CDN's HTML 502 page gives the message 'HTTP 502', with none of the HTML in it."""
    html = "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
    mocked.post(CHAT_URL, status=502, body=html, content_type="text/html", repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.message == "openrouter answered 502: HTTP 502"
    assert "<" not in str(caught.value)
    assert "cloudflare" not in str(caught.value)


# --- the key never leaks -----------------------------------------------------------------------


async def test_a_key_echoed_in_an_error_body_is_redacted(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A provider echoing our key back gets '***' in its place; repr/str never show the key."""
    mocked.post(
        CHAT_URL,
        status=401,
        payload={"error": {"code": 401, "message": f"Invalid key {KEY} for this account"}},
    )
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    error = caught.value
    assert "Invalid key *** for this account" in error.message
    for text in (error.message, str(error), repr(error), repr(error.args)):
        assert KEY not in text


def test_provider_and_secret_repr_hide_the_key() -> None:
    """repr()/str() of a Provider and its Secret never contain the key."""
    for text in (repr(OPENROUTER), str(OPENROUTER), repr(OPENROUTER.api_key), str(OPENAI)):
        assert KEY not in text
    assert "***" in repr(OPENROUTER)


async def test_a_key_echoed_mid_stream_is_redacted(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A mid-stream error event that echoes the key is raised with '***' instead."""
    event = {"error": {"code": 401, "message": f"bad key {KEY}"}, "choices": []}
    mocked.post(CHAT_URL, body=sse(event, done=False), content_type="text/event-stream")
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert KEY not in str(caught.value)
    assert "bad key ***" in caught.value.message


async def test_a_key_echoed_in_a_choice_error_is_redacted(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """An OpenRouter choices[0].error that echoes the key is raised with '***' instead."""
    body = completion("")
    body["choices"][0]["finish_reason"] = "error"
    body["choices"][0]["error"] = {"code": 400, "message": f"rejected key {KEY}"}
    mocked.post(CHAT_URL, payload=body)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert KEY not in str(caught.value)


async def test_a_key_cut_by_truncation_is_not_partly_leaked(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A long provider message whose 500-char cut falls inside the key leaks no part of it."""
    message = "x" * 488 + KEY  # the cut at 500 keeps "sk-secret-12"
    mocked.post(CHAT_URL, status=400, payload={"error": {"message": message}})
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert KEY[:-1] not in str(caught.value)


# --- request shape -----------------------------------------------------------------------------


async def test_openrouter_request_shape(client: UpstreamClient, mocked: aioresponses) -> None:
    """OpenRouter: POST {base}/chat/completions, bearer + attribution headers, usage included."""
    mocked.post(CHAT_URL, payload=completion())
    body = {
        **BODY,
        "temperature": None,
        "stream": True,
        "plugins": [{"id": "web"}],
        "stream_options": {"include_usage": True},
    }
    await client.chat(OPENROUTER, body, timeout_s=30)
    (request,) = requests_to(mocked)
    headers = request.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["HTTP-Referer"] == APP_URL
    assert headers["X-OpenRouter-Title"] == APP_TITLE
    assert headers["Content-Type"] == "application/json"
    sent = sent_body(mocked)
    assert sent["stream"] is False
    assert sent["usage"] == {"include": True}
    assert sent["plugins"] == [{"id": "web"}]
    assert sent["messages"] == BODY["messages"]
    assert "temperature" not in sent
    assert "stream_options" not in sent
    assert body["stream"] is True  # the caller's mapping is not modified


async def test_openai_kind_request_shape(client: UpstreamClient, mocked: aioresponses) -> None:
    """openai kind: OpenRouter-only keys removed, no attribution headers, key still sent."""
    mocked.post(LOCAL_CHAT_URL, payload=completion())
    body = {
        **BODY,
        "plugins": [{"id": "web"}],
        "provider": {"zdr": True},
        "usage": {"include": True},
        "reasoning": {"effort": "low"},
        "models": ["a", "b"],
        "transforms": [],
        "seed": 7,
        "user": None,
    }
    await client.chat(OPENAI, body, timeout_s=30)
    (request,) = requests_to(mocked, LOCAL_CHAT_URL)
    headers = request.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    for name in ("HTTP-Referer", "X-OpenRouter-Title", "X-Title"):
        assert name not in headers
    sent = sent_body(mocked, LOCAL_CHAT_URL)
    assert sent == {**BODY, "seed": 7, "stream": False}


async def test_streaming_request_shape(client: UpstreamClient, mocked: aioresponses) -> None:
    """A stream request says stream: true; the openai kind also asks for the usage chunk."""
    mocked.post(CHAT_URL, body=sse(chunk("stop")), content_type="text/event-stream")
    mocked.post(LOCAL_CHAT_URL, body=sse(chunk("stop")), content_type="text/event-stream")
    await collect(client, OPENROUTER)
    await collect(client, OPENAI)
    assert sent_body(mocked)["stream"] is True
    assert "stream_options" not in sent_body(mocked)
    local = sent_body(mocked, LOCAL_CHAT_URL)
    assert local["stream"] is True
    assert local["stream_options"] == {"include_usage": True}


async def test_keyless_provider_sends_no_authorization(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A provider with neither key nor key variable sends no Authorization header."""
    keyless = Provider(
        name="local", kind="openai", base_url=LOCAL_URL, api_key=None, api_key_env=None
    )
    mocked.post(LOCAL_CHAT_URL, payload=completion())
    await client.chat(keyless, BODY, timeout_s=30)
    assert "Authorization" not in requests_to(mocked, LOCAL_CHAT_URL)[0].kwargs["headers"]


@pytest.mark.parametrize("streaming", [False, True])
async def test_missing_key_fails_before_any_request(
    client: UpstreamClient, mocked: aioresponses, streaming: bool
) -> None:
    """api_key_env set but no key: ProviderKeyMissingError naming the variable, nothing sent."""
    unset = Provider(
        name="openrouter",
        kind="openrouter",
        base_url=BASE_URL,
        api_key=None,
        api_key_env="OPENROUTER_API_KEY",
    )
    mocked.post(CHAT_URL, payload=completion(), repeat=True)
    call = collect(client, unset) if streaming else client.chat(unset, BODY, timeout_s=30)
    with pytest.raises(ProviderKeyMissingError, match="OPENROUTER_API_KEY") as caught:
        await call
    assert caught.value.variable == "OPENROUTER_API_KEY"
    assert requests_to(mocked) == []


# --- non-streaming responses -------------------------------------------------------------------


async def test_choice_error_with_status_200_is_an_upstream_error(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """OpenRouter's 200 + choices[0].error + finish_reason 'error' raises with its code."""
    body = completion("")
    body["choices"][0]["finish_reason"] = "error"
    body["choices"][0]["error"] = {"code": 400, "message": "context too long"}
    mocked.post(CHAT_URL, payload=body, repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert "context too long" in caught.value.message
    assert len(requests_to(mocked)) == 1


async def test_choice_error_with_a_string_code_is_a_retryable_502(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """A choice error whose code is a string counts as a retryable 502."""
    body = completion("")
    body["choices"][0]["error"] = {"code": "server_error", "message": "provider crashed"}
    mocked.post(CHAT_URL, payload=body)
    mocked.post(CHAT_URL, payload=completion("recovered"))
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert reply.completion.choices[0].message.content == "recovered"
    assert clock.sleeps == [0.5]


@pytest.mark.parametrize("raw", ["{not json", "[]", '{"choices": "nope"}'])
async def test_malformed_200_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses, raw: str
) -> None:
    """A 200 that is not a chat.completion raises UpstreamError(kind='invalid_response')."""
    mocked.post(CHAT_URL, body=raw, repeat=True)
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.kind == "invalid_response"
    assert caught.value.status == 200
    assert caught.value.retryable is False
    assert len(requests_to(mocked)) == 1


async def test_no_choices_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A 200 with an empty choices list raises UpstreamError(kind='invalid_response')."""
    mocked.post(CHAT_URL, payload={**completion(), "choices": []})
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.kind == "invalid_response"


async def test_reasoning_and_cost_are_parsed(client: UpstreamClient, mocked: aioresponses) -> None:
    """message.reasoning stays apart from content, and usage.cost is read."""
    body = completion("42", reasoning="6 * 7 = 42", refusal=None, annotations=[])
    body["usage"] = {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "cost": 0.00123,
        "cost_details": {"upstream_inference_cost": None},
    }
    body["provider"] = "OpenAI"
    mocked.post(CHAT_URL, payload=body)
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    message = reply.completion.choices[0].message
    assert message.content == "42"
    assert message.reasoning == "6 * 7 = 42"
    assert reply.completion.usage is not None
    assert reply.completion.usage.cost == pytest.approx(0.00123)
    assert reply.completion.usage.total_tokens == 30
    assert reply.completion.id == "gen-1"


async def test_tool_call_completion_is_parsed(client: UpstreamClient, mocked: aioresponses) -> None:
    """A tool-call answer (content null) keeps id, name and the JSON-string arguments."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
    }
    body = completion(None, tool_calls=[call])
    body["choices"][0]["finish_reason"] = "tool_calls"
    mocked.post(CHAT_URL, payload=body)
    reply = await client.chat(OPENROUTER, BODY, timeout_s=30)
    choice = reply.completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].id == "call_1"
    assert choice.message.tool_calls[0].function.name == "lookup"
    assert choice.message.tool_calls[0].function.arguments == '{"q": "x"}'


# --- concurrency slots -------------------------------------------------------------------------


async def test_concurrency_slot_is_released_after_failures(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """With max_concurrency=1, a call that failed (HTTP, connection) frees its slot."""
    mocked.post(CHAT_URL, status=400)
    mocked.post(CHAT_URL, exception=aiohttp.ClientConnectionError())
    mocked.post(CHAT_URL, payload=completion("third"))
    with pytest.raises(UpstreamError):
        await client.chat(LIMITED, BODY, timeout_s=30)
    async with asyncio.timeout(1):  # a leaked slot would hang here
        reply = await client.chat(LIMITED, BODY, timeout_s=30)
    assert reply.attempts == 2
    assert reply.completion.choices[0].message.content == "third"


async def test_leaving_a_stream_early_closes_the_response_and_frees_the_slot(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A consumer that stops reading makes the client close (not release) the response."""
    calls: list[str] = []

    class Recording(CompatResponse):
        def close(self) -> None:
            calls.append("close")
            super().close()

    body = sse(chunk(content="a"), chunk(content="b"), chunk("stop"))
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream", response_class=Recording)
    mocked.post(CHAT_URL, payload=completion())
    async with aclosing(client.stream(LIMITED, BODY, timeout_s=30)) as stream:
        async for first in stream:
            assert first[0].chunk.choices[0].delta.content == "a"
            break
    assert calls == ["close"]
    async with asyncio.timeout(1):  # a leaked slot would hang here
        reply = await client.chat(LIMITED, BODY, timeout_s=30)
    assert reply.attempts == 1


# --- streaming ---------------------------------------------------------------------------------


async def test_stream_yields_chunks_in_order(client: UpstreamClient, mocked: aioresponses) -> None:
    """Chunks come out in order, the usage-only chunk included, and [DONE] ends the stream."""
    usage = {
        **chunk(),
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.5},
    }
    body = sse(
        chunk(role="assistant", content=""),
        chunk(content="Hel"),
        chunk(content="lo"),
        chunk("stop"),
        usage,
    )
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    chunks = await collect(client)
    deltas = [c.choices[0].delta.content if c.choices else None for c in chunks]
    assert deltas == ["", "Hel", "lo", None, None]
    assert chunks[3].choices[0].finish_reason == "stop"
    assert chunks[4].usage is not None
    assert chunks[4].usage.cost == 0.5


async def test_stream_tolerates_comments_and_crlf(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """': OPENROUTER PROCESSING' comments and CRLF line endings do not disturb decoding."""
    body = (
        ": OPENROUTER PROCESSING\r\n\r\n"
        + sse(chunk(content="a"), eol="\r\n", done=False)
        + ": OPENROUTER PROCESSING\r\n\r\n"
        + sse(chunk("stop", content="b"), eol="\r\n")
    )
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    chunks = await collect(client)
    assert [c.choices[0].delta.content for c in chunks] == ["a", "b"]


async def test_nothing_after_done_is_read(client: UpstreamClient, mocked: aioresponses) -> None:
    """Data after 'data: [DONE]' is never parsed (garbage there raises nothing)."""
    body = sse(chunk(content="a"), chunk("stop")) + "data: {not json\n\n"
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    assert len(await collect(client)) == 2


async def test_stream_without_done_after_a_finish_reason_is_accepted(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A stream that closes after its finish_reason but without [DONE] ends normally."""
    mocked.post(
        CHAT_URL,
        body=sse(chunk(content="a"), chunk("stop"), done=False),
        content_type="text/event-stream",
    )
    chunks = await collect(client)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_last_event_without_its_blank_line_is_delivered(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A final event cut before its blank line (and newline) is still delivered."""
    body = sse(chunk(content="a"), done=False) + f"data: {json.dumps(chunk('stop'))}"
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    chunks = await collect(client)
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


async def test_stream_ending_with_neither_done_nor_finish_is_an_error(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A stream that closes mid-answer (no finish_reason, no [DONE]) raises invalid_response."""
    mocked.post(
        CHAT_URL,
        body=sse(chunk(content="half an ans"), done=False),
        content_type="text/event-stream",
    )
    seen: list[ChatCompletionChunk] = []

    async def consume() -> None:
        async with aclosing(client.stream(OPENROUTER, BODY, timeout_s=30)) as stream:
            async for batch in stream:
                seen.extend(event.chunk for event in batch)

    with pytest.raises(UpstreamError) as caught:
        await consume()
    assert caught.value.kind == "invalid_response"
    assert len(seen) == 1


async def test_openrouter_mid_stream_error_event_raises(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """OpenRouter's error event (top-level error + finish_reason 'error') raises with its text."""
    error_event = {
        **chunk("error", content=""),
        "error": {
            "code": 502,
            "message": "boom",
            "metadata": {"error_type": "provider_unavailable"},
        },
    }
    body = ": OPENROUTER PROCESSING\n\n" + sse(chunk(content="Hel"), error_event, done=False)
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    with pytest.raises(UpstreamError, match="boom") as caught:
        await collect(client)
    assert caught.value.retryable is False
    assert len(requests_to(mocked)) == 1  # nothing is retried once the stream has begun


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            {
                "error": {
                    "message": "bad param",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            },
            "bad param",
            id="vllm",
        ),
        pytest.param({"error": "overloaded"}, "overloaded", id="string"),
        pytest.param({"error": {"code": "server_error"}}, "unknown error", id="no-message"),
    ],
)
async def test_other_mid_stream_error_shapes_raise(
    client: UpstreamClient, mocked: aioresponses, event: dict[str, Any], expected: str
) -> None:
    """vLLM's error event (then [DONE]), a string error and a message-less error all raise."""
    mocked.post(CHAT_URL, body=sse(chunk(content="a"), event), content_type="text/event-stream")
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.message == f"openrouter failed mid-stream: {expected}"


async def test_malformed_stream_event_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A data event that is not JSON raises UpstreamError(kind='invalid_response')."""
    mocked.post(CHAT_URL, body=sse("{oops"), content_type="text/event-stream")
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.kind == "invalid_response"


async def test_stream_that_breaks_off_is_a_connection_error(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A connection dropped mid-stream raises UpstreamError(kind='connection'), not aiohttp's."""
    mocked.post(
        CHAT_URL,
        body=sse(chunk(content="a"), done=False),
        content_type="text/event-stream",
        response_class=StreamBreaksResponse,
    )
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.kind == "connection"
    assert isinstance(caught.value.__cause__, aiohttp.ClientPayloadError)


async def test_429_before_the_stream_starts_is_retried(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """An error status before any byte (429 + Retry-After: 2) is retried, then streamed."""
    mocked.post(CHAT_URL, status=429, headers={"Retry-After": "2"})
    mocked.post(CHAT_URL, body=sse(chunk("stop", content="hi")), content_type="text/event-stream")
    chunks = await collect(client)
    assert [c.choices[0].delta.content for c in chunks] == ["hi"]
    assert clock.sleeps == [2.0]
    assert len(requests_to(mocked)) == 2


async def test_stream_pre_start_errors_follow_the_chat_rules(
    client: UpstreamClient, clock: FakeClock, mocked: aioresponses
) -> None:
    """Before the stream starts, a 401 is final at once and the key is redacted."""
    mocked.post(
        CHAT_URL,
        status=401,
        repeat=True,
        payload={"error": {"code": 401, "message": f"No auth credentials {KEY}"}},
    )
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.status == 401
    assert KEY not in str(caught.value)
    assert len(requests_to(mocked)) == 1
    assert clock.sleeps == []


async def test_mid_stream_error_reports_the_attempts_made(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """A mid-stream error after one retried connect says attempts == 2."""
    mocked.post(CHAT_URL, status=503)
    error_event = {**chunk("error"), "error": {"code": 502, "message": "boom"}}
    mocked.post(CHAT_URL, body=sse(error_event, done=False), content_type="text/event-stream")
    with pytest.raises(UpstreamError, match="boom") as caught:
        await collect(client)
    assert caught.value.attempts == 2


async def _one_huge_event(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    event = chunk("stop", content="a" * 1_000_000)
    await response.write(sse(event).encode())
    await response.write_eof()
    return response


async def test_an_event_over_half_a_megabyte_is_read(client: UpstreamClient) -> None:
    """A 1 MB data line (e.g. a base64 image delta) from a real socket is delivered whole."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _one_huge_event)
    async with TestServer(app, host="127.0.0.1") as server:
        provider = Provider(
            name="local",
            kind="openai",
            base_url=str(server.make_url("/v1")),
            api_key=None,
            api_key_env=None,
        )
        chunks = await collect(client, provider, timeout_s=10)
    assert len(chunks[0].choices[0].delta.content or "") == 1_000_000


async def test_chunk_accumulator_reassembles_content_and_tool_calls(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """Streamed content, reasoning and parallel tool-call fragments fold into one completion."""
    first_0 = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    first_1 = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    usage = {
        **chunk(),
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.01},
    }
    body = sse(
        chunk(role="assistant", reasoning="think "),
        chunk(reasoning="hard"),
        chunk(content="Let me "),
        chunk(content="check."),
        chunk(tool_calls=[first_0]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"q": "wea'}}]),
        chunk(tool_calls=[first_1]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": 'ther"}'}}]),
        # an upstream that wrongly repeats id and name must not corrupt the call
        chunk(
            tool_calls=[
                {"index": 1, "id": "call_b", "function": {"name": "weather", "arguments": "{}"}}
            ]
        ),
        chunk("tool_calls"),
        usage,
    )
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    accumulator = ChunkAccumulator()
    for c in await collect(client):
        accumulator.add(c)
    result = accumulator.completion()
    choice = result.choices[0]
    assert result.id == "gen-1"
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning == "think hard"
    assert choice.message.tool_calls is not None
    calls = [(t.id, t.function.name, t.function.arguments) for t in choice.message.tool_calls]
    assert calls == [("call_a", "lookup", '{"q": "weather"}'), ("call_b", "weather", "{}")]
    assert result.usage is not None
    assert result.usage.cost == 0.01


# --- pure functions ----------------------------------------------------------------------------


def test_prepare_body_drops_none_and_sets_stream() -> None:
    """None values go, 'stream' is forced, and the input mapping is left alone."""
    body = {"model": "m", "messages": [], "temperature": None, "stream": True, "seed": 3}
    prepared = prepare_body(OPENROUTER, body, stream=False)
    assert prepared == {
        "model": "m",
        "messages": [],
        "stream": False,
        "seed": 3,
        "usage": {"include": True},
    }
    assert body["temperature"] is None
    assert body["stream"] is True


def test_prepare_body_keeps_a_callers_usage_and_stream_options() -> None:
    """A caller's own 'usage' (OpenRouter) and 'stream_options' (openai, streaming) win."""
    usage = {"include": False}
    assert prepare_body(OPENROUTER, {"usage": usage}, stream=True)["usage"] == usage
    options = {"include_usage": False}
    prepared = prepare_body(OPENAI, {"stream_options": options}, stream=True)
    assert prepared["stream_options"] == options


@pytest.mark.parametrize(
    "key",
    ["models", "route", "provider", "plugins", "reasoning", "usage", "transforms", "session_id"],
)
def test_prepare_body_strips_openrouter_only_keys_for_openai(key: str) -> None:
    """Each OpenRouter-only key is removed for the openai kind and kept for OpenRouter."""
    body = {"model": "m", key: {"x": 1}}
    assert key not in prepare_body(OPENAI, body, stream=False)
    assert prepare_body(OPENROUTER, body, stream=False)[key] == {"x": 1}


def test_request_headers() -> None:
    """OpenRouter gets bearer + attribution; openai gets bearer only."""
    openrouter = request_headers(OPENROUTER)
    assert openrouter["Authorization"] == f"Bearer {KEY}"
    assert openrouter["HTTP-Referer"] == APP_URL
    assert openrouter["X-OpenRouter-Title"] == APP_TITLE
    assert set(request_headers(OPENAI)) == {"Content-Type", "Accept", "Authorization"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "Retry-After": "30"}, 1.5),
        ({"retry-after-ms": "-5", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    """Seconds or milliseconds are read; HTTP dates, negatives and junk are ignored."""
    assert retry_after_seconds(CIMultiDict(headers)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"error": {"code": 429, "message": "Rate limit exceeded"}}', "Rate limit exceeded"),
        ('{"error": {"message": "m", "type": "t", "param": null, "code": "c"}}', "m"),
        ('{"object": "error", "message": "flat", "code": 400}', "flat"),
        ('{"error": "plain string"}', "plain string"),
        ('{"error": {"code": 500}}', None),
        ('{"error": {"message": 42}}', None),
        ('{"error": null}', None),
        ('["error"]', None),
        ('"just a string"', None),
        ("<html><body>502 Bad Gateway</body></html>", None),
        ("", None),
    ],
)
def test_error_message(text: str, expected: str | None) -> None:
    """The provider's message is found in every known shape; anything else gives None."""
    assert error_message(text) == expected


def test_long_provider_messages_are_capped_after_redaction() -> None:
    """A very long provider message is cut to 500 characters (plus an ellipsis) by redact()."""
    assert error_message(json.dumps({"error": {"message": "y" * 2000}})) == "y" * 2000
    assert redact("z" * 2000, OPENROUTER) == "z" * 500 + "…"


def test_redact() -> None:
    """redact() replaces every copy of the key and leaves keyless providers' text alone."""
    assert redact(f"{KEY} and {KEY}", OPENROUTER) == "*** and ***"
    keyless = Provider(name="x", kind="openai", base_url=LOCAL_URL, api_key=None, api_key_env=None)
    assert redact(f"{KEY}", keyless) == KEY


# --- sse.iter_sse_batches ----------------------------------------------------------------------


async def _blocks(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


async def _events(raw: bytes, size: int) -> list[bytes]:
    return [
        data
        async for batch in iter_sse_batches(_blocks(raw, size), max_line_bytes=1024)
        for data in batch
    ]


SSE_CASES = [
    pytest.param(b"data: a\n\ndata: b\n\n", [b"a", b"b"], id="lf"),
    pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", [b"a", b"b"], id="crlf"),
    pytest.param(b": keep-alive\n\ndata: a\n\n", [b"a"], id="comment"),
    pytest.param(b"data:a\n\n", [b"a"], id="no-space"),
    pytest.param(b"data:  a\n\n", [b" a"], id="only-one-space-stripped"),
    pytest.param(b'data: {"x":\ndata: 1}\n\n', [b'{"x":\n1}'], id="multi-line"),
    pytest.param(b"event: message\nid: 7\nretry: 10\ndata: a\n\n", [b"a"], id="other-fields"),
    pytest.param(b"data: a\n\ndata: b", [b"a", b"b"], id="last-without-blank-line"),
    pytest.param(b"data: a\n\ndata: b\r", [b"a", b"b"], id="last-ends-in-cr"),
    pytest.param(b"\n\n\n", [], id="only-blank-lines"),
]


@pytest.mark.parametrize(("raw", "expected"), SSE_CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096])
async def test_iter_sse_batches(raw: bytes, expected: list[bytes], size: int) -> None:
    """SSE decoding: LF/CRLF, comments, one stripped space, joined data lines, unterminated end,
    whatever the blocks the network cut the stream into."""
    assert await _events(raw, size) == expected


async def test_iter_sse_batches_groups_the_events_of_one_block() -> None:
    """Events completed by one read come out together; a block ending mid-event adds nothing."""
    raw = b"data: a\n\ndata: b\n\ndata: c"
    blocks = [raw[:12], raw[12:16], raw[16:]]  # "data: a\n\nda", "ta: ", "b\n\ndata: c"

    async def reads() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    batches = [batch async for batch in iter_sse_batches(reads(), max_line_bytes=1024)]
    assert batches == [[b"a"], [b"b"], [b"c"]]
    whole = [batch async for batch in iter_sse_batches(_blocks(raw, 4096), max_line_bytes=1024)]
    assert whole == [[b"a", b"b"], [b"c"]]


async def test_a_line_longer_than_the_limit_is_refused_not_buffered() -> None:
    """A line that never ends stops the decoder at the limit instead of growing without bound."""
    raw = b"data: " + b"x" * 2000
    with pytest.raises(EventTooLargeError):
        await _events(raw, 100)
    assert await _events(b"data: " + b"x" * 1000 + b"\n\n", 100) == [b"x" * 1000]


async def test_an_event_of_many_short_lines_is_bounded_too() -> None:
    """Short data lines that add up past the limit are refused like one long line."""
    with pytest.raises(EventTooLargeError):
        await _events(b"data: 0123456789\n" * 200 + b"\n", 4096)
    assert len((await _events(b"data: 0123456789\n" * 50 + b"\n", 4096))[0]) == 50 * 11 - 1


# --- review fixes: slots, bad bytes, oversized events, partial batches --------------------------


class TickingClock(FakeClock):
    """A clock that moves ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


async def test_a_budget_spent_while_queued_gives_the_slot_back(mocked: aioresponses) -> None:
    """The deadline passes between taking the provider's only slot and starting the attempt:
    the call times out, and the slot is free for the next call (it used to be lost)."""
    clock = TickingClock(step=1.0)
    client = UpstreamClient(clock=clock, rand=lambda: 0.0)
    mocked.post(CHAT_URL, payload=completion())
    try:
        with pytest.raises(UpstreamTimeoutError):
            await client.chat(LIMITED, BODY, timeout_s=2.5)
        clock.step = 0.0
        async with asyncio.timeout(1):  # a lost slot would hang here
            reply = await client.chat(LIMITED, BODY, timeout_s=30)
        assert reply.completion.choices[0].message.content == "Hello"
    finally:
        await client.aclose()


async def test_invalid_utf8_in_a_stream_event_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """Bytes that are not UTF-8 inside an event are a malformed event, not a crash."""
    event = json.dumps(chunk(content="X")).encode().replace(b'"X"', b'"\xff"')
    body = b"data: " + event + b"\n\ndata: [DONE]\n\n"
    mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.kind == "invalid_response"


async def test_invalid_utf8_in_a_completion_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """The same for a whole (non-streamed) body."""
    body = json.dumps(completion("X")).encode().replace(b'"X"', b'"\xff"')
    mocked.post(CHAT_URL, body=body, content_type="application/json")
    with pytest.raises(UpstreamError) as caught:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert caught.value.kind == "invalid_response"


async def test_an_event_over_the_limit_is_an_invalid_response(
    client: UpstreamClient, mocked: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream event larger than MAX_EVENT_BYTES ends the stream with a clear error."""
    monkeypatch.setattr("fusion_engine.upstream.MAX_EVENT_BYTES", 200)
    mocked.post(CHAT_URL, body=sse(chunk(content="x" * 500)), content_type="text/event-stream")
    with pytest.raises(UpstreamError) as caught:
        await collect(client)
    assert caught.value.kind == "invalid_response"
    assert "over 200 bytes" in caught.value.message


async def test_events_before_a_malformed_one_in_the_same_read_are_delivered(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """Two good events and a broken one arrive in one read: the good ones are handed on
    before the error is raised."""
    mocked.post(
        CHAT_URL,
        body=sse(chunk(content="a"), chunk(content="b"), "{oops"),
        content_type="text/event-stream",
    )
    seen: list[str | None] = []

    async def consume() -> None:
        async with aclosing(client.stream(OPENROUTER, BODY, timeout_s=30)) as stream:
            async for batch in stream:
                seen.extend(event.chunk.choices[0].delta.content for event in batch)

    with pytest.raises(UpstreamError) as caught:
        await consume()
    assert caught.value.kind == "invalid_response"
    assert seen == ["a", "b"]


# --- bounded bodies (issue 15, item 11) ---------------------------------------------------------

MIB = 1024 * 1024


class EndlessBody:
    """A server that answers 200 with an endless chunked body (no Content-Length) and counts
    what it managed to write before the client hung up."""

    def __init__(self, *, sse: bool = False, status: int = 200) -> None:
        self.written = 0
        self.sse = sse
        self.status = status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status)
        response.content_type = "text/event-stream" if self.sse else "application/json"
        await response.prepare(request)
        piece = b'{"choices": [{"message": {"content": "' + b"x" * MIB
        if self.sse:
            event = json.dumps(chunk(content="x" * (MIB // 2))).encode()
            piece = b"data: " + event + b"\n\n"
        try:
            for _ in range(200):  # 100-200 MiB if nobody stops reading
                await response.write(piece)
                self.written += len(piece)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    def provider(self, server: TestServer) -> Provider:
        return Provider(
            name="local", kind="openai", base_url=str(server.make_url("/v1")), api_key=None,
            api_key_env=None,
        )  # fmt: skip


async def serve_endless(body: EndlessBody) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", body.handle)
    return TestServer(app, host="127.0.0.1")


async def drain(stream: AsyncGenerator[list[StreamEvent], None], sizes: list[int]) -> None:
    """Read ``stream`` to its end, noting the data size of each batch in ``sizes``."""
    async with aclosing(stream):
        async for batch in stream:
            sizes.append(sum(len(event.data) for event in batch))


async def test_an_answer_over_the_bound_fails_and_stops_the_read(client: UpstreamClient) -> None:
    """A chunked answer that never ends: the call fails as an invalid response once 8 MiB have
    been read, without retrying and without reading on (the server could not write 100 MiB)."""
    endless = EndlessBody()
    async with await serve_endless(endless) as server:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(endless.provider(server), BODY, timeout_s=30)
    assert "over 8 MiB" in raised.value.message
    assert raised.value.kind == "invalid_response"
    assert raised.value.attempts == 1
    assert endless.written < 50 * MIB


async def test_a_compressed_answer_is_bounded_by_its_unpacked_size(client: UpstreamClient) -> None:
    """Found in review: a gzip body's Content-Length is its packed size, so a 40 KB body that
    unpacks to 9 MiB passed a check on Content-Length alone. The bound counts unpacked bytes."""
    answer = json.dumps({"choices": [{"message": {"content": "a " * (9 * MIB // 2)}}]})
    packed = gzip.compress(answer.encode())
    assert len(packed) < MIB

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=packed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(EndlessBody().provider(server), BODY, timeout_s=30)
    assert "over 8 MiB" in raised.value.message


async def test_an_answer_announced_over_the_bound_is_not_read(
    client: UpstreamClient, mocked: aioresponses
) -> None:
    """Content-Length over the bound: refused before reading, not retried."""
    mocked.post(CHAT_URL, status=200, body=b"{}", headers={"Content-Length": str(9 * MIB)})
    with pytest.raises(UpstreamError) as raised:
        await client.chat(OPENROUTER, BODY, timeout_s=30)
    assert "over 8 MiB" in raised.value.message
    assert len(requests_to(mocked)) == 1


async def test_a_callers_bound_replaces_the_default(client: UpstreamClient) -> None:
    """The passthrough passes its own (larger) bound; a small one is honoured too."""
    endless = EndlessBody()
    async with await serve_endless(endless) as server:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(endless.provider(server), BODY, timeout_s=30, max_body_bytes=MIB)
    assert "over 1 MiB" in raised.value.message


async def test_a_stream_adding_up_over_the_bound_fails(client: UpstreamClient) -> None:
    """Events of half a MiB each, endlessly: the stream fails once they add up to 8 MiB."""
    endless = EndlessBody(sse=True)
    async with await serve_endless(endless) as server:
        received: list[int] = []
        with pytest.raises(UpstreamError) as raised:
            await drain(client.stream(endless.provider(server), BODY, timeout_s=30), received)
    assert "streamed an answer over 8 MiB" in raised.value.message
    assert 0 < sum(received) <= 8 * MIB
    assert endless.written < 50 * MIB


async def test_a_relayed_stream_may_be_bounded_per_event_only(client: UpstreamClient) -> None:
    """``max_total_bytes=None`` (the passthrough relay keeps nothing): 9 MiB pass."""
    endless = EndlessBody(sse=True)
    async with await serve_endless(endless) as server:
        provider = endless.provider(server)
        received = 0
        stream = client.stream(provider, BODY, timeout_s=30, max_total_bytes=None)
        async with aclosing(stream):
            async for batch in stream:
                received += sum(len(event.data) for event in batch)
                if received > 9 * MIB:
                    break
    assert received > 9 * MIB


async def test_an_endless_error_body_is_read_only_in_part(client: UpstreamClient) -> None:
    """A 500 whose body never ends: the error is raised from its first 64 KiB."""
    endless = EndlessBody(status=400)
    async with await serve_endless(endless) as server:
        with pytest.raises(UpstreamError) as raised:
            await client.chat(endless.provider(server), BODY, timeout_s=30)
    assert raised.value.status == 400
    assert "HTTP 400" in raised.value.message
    assert endless.written < 50 * MIB
