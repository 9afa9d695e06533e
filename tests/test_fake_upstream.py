"""Tests for the fake upstream, driven by a raw aiohttp client and by the official openai client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply, load_script
from fusion_engine.testing.fake_upstream import main, stamped_ns

MODEL = "deepseek/deepseek-v4-flash"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is six times seven?"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[AsyncOpenAI]:
    api = AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    yield api
    await api.close()


async def post_chat(
    session: aiohttp.ClientSession, fake: FakeUpstream, **body: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST a chat request; return status, headers and the raw body."""
    payload = {"model": MODEL, "messages": USER, **body}
    async with session.post(f"{fake.base_url}/chat/completions", json=payload) as response:
        return response.status, dict(response.headers), await response.read()


def sse_data(raw: bytes) -> list[str]:
    """Return the ``data:`` payloads of an SSE body, in order, whatever its line endings."""
    text = raw.decode().replace("\r\n", "\n")
    return [
        line.removeprefix("data: ")
        for event in text.split("\n\n")
        for line in event.split("\n")
        if line.startswith("data: ")
    ]


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    """Return the JSON chunks of an SSE body (everything but ``[DONE]``)."""
    return [json.loads(data) for data in sse_data(raw) if data != "[DONE]"]


async def drain(
    stream: AsyncStream[ChatCompletionChunk], into: list[ChatCompletionChunk] | None = None
) -> None:
    """Consume an openai stream, keeping the chunks in ``into`` until it ends or raises."""
    async for chunk in stream:
        if into is not None:
            into.append(chunk)


async def wait_for(condition: Any, within_s: float = 2.0) -> None:
    """Poll ``condition()`` until it is truthy; the server notices disconnects asynchronously."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- non-streaming ---------------------------------------------------------------------------


async def test_non_stream_text_parsed_by_openai(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """A scripted text reply comes back through openai with stop, usage and the slug echoed."""
    fake.script(MODEL, Reply(text="42"))
    result = await client.chat.completions.create(model=MODEL, messages=USER)
    assert result.choices[0].message.content == "42"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == MODEL
    assert result.object == "chat.completion"
    assert result.usage is not None
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert fake.completed == [MODEL]


async def test_non_stream_has_openrouter_flavour(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Non-stream bodies carry a gen- id mirrored in X-Generation-Id, provider and priced usage."""
    fake.prices["priced/model"] = (1e-5, 3e-5)
    fake.script("priced/model", Reply(text="one two three", prompt_tokens=10))
    status, headers, raw = await post_chat(session, fake, model="priced/model")
    body = json.loads(raw)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["id"].startswith("gen-")
    assert headers["X-Generation-Id"] == body["id"]
    assert body["provider"] == "Fake"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["native_finish_reason"] == "stop"
    assert choice["logprobs"] is None
    assert choice["message"] == {"role": "assistant", "content": "one two three", "refusal": None}
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        10,
        3,
        13,
    )
    assert usage["cost"] == pytest.approx(10 * 1e-5 + 3 * 3e-5)


async def test_default_text_uses_last_user_message(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Without text the answer is '<model> answer: <last user text>', text parts space-joined."""
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "this"},
            ],
        },
    ]
    _, _, raw = await post_chat(session, fake, model="any/model", messages=messages)
    body = json.loads(raw)
    assert body["choices"][0]["message"]["content"] == "any/model answer: look at this"
    # 2 + 2 + 3 words plus one per message.
    assert body["usage"]["prompt_tokens"] == 10


async def test_tool_call_arguments_parsed_by_openai(
    fake: FakeUpstream, client: AsyncOpenAI
) -> None:
    """A tool-call reply has null content, finish_reason tool_calls and string arguments."""
    call = FakeToolCall("lookup", '{"q": "weather"}', id="call_1")
    fake.script(MODEL, Reply(tool_calls=[call]))
    result = await client.chat.completions.create(model=MODEL, messages=USER)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    tool_call = choice.message.tool_calls[0]
    assert tool_call.id == "call_1"
    assert tool_call.type == "function"
    assert tool_call.function.name == "lookup"
    assert json.loads(tool_call.function.arguments) == {"q": "weather"}


async def test_invalid_tool_arguments_are_sent_verbatim(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Tool-call arguments are not re-encoded, so broken JSON reaches the client as scripted."""
    fake.script(MODEL, Reply(tool_calls=[FakeToolCall("lookup", '{"q": ')]))
    _, _, raw = await post_chat(session, fake)
    call = json.loads(raw)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"q": '
    assert call["id"].startswith("call_")


async def test_reasoning_in_message_and_before_content_in_stream(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Reasoning is message.reasoning, and streams as delta.reasoning before any content."""
    fake.script(MODEL, Reply(text="final", reasoning="think hard first", chunk_size=5))
    _, _, raw = await post_chat(session, fake)
    assert json.loads(raw)["choices"][0]["message"]["reasoning"] == "think hard first"
    _, _, raw = await post_chat(session, fake, stream=True)
    # Skip the role chunk; drop the finish and usage chunks.
    deltas = [c["choices"][0]["delta"] for c in sse_chunks(raw)[1:-2]]
    assert [list(d) for d in deltas] == [["reasoning"]] * 4 + [["content"]]
    assert "".join(d["reasoning"] for d in deltas[:4]) == "think hard first"
    assert deltas[4]["content"] == "final"


async def test_max_tokens_truncates_with_length(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """max_tokens / max_completion_tokens cut the answer to N words with finish_reason length."""
    fake.script(MODEL, Reply(text="one two  three four five"))
    result = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3)
    assert result.choices[0].message.content == "one two  three"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3
    result = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_completion_tokens=10,
    )
    assert result.choices[0].message.content == "one two  three four five"
    assert result.choices[0].finish_reason == "stop"


async def test_choice_error_keeps_partial_content(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """choice_error answers 200 with choices[0].error, finish_reason error and partial content."""
    fake.script(MODEL, Reply(text="a b c d", choice_error="upstream died"))
    status, _, raw = await post_chat(session, fake)
    choice = json.loads(raw)["choices"][0]
    assert status == 200
    assert choice["finish_reason"] == "error"
    assert choice["error"] == {"code": 502, "message": "upstream died"}
    assert choice["message"]["content"] == "a b"


async def test_usage_and_cost_can_be_omitted(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """include_cost=False drops usage.cost (llama.cpp-like); include_usage=False drops usage."""
    fake.script("local/model", Reply(include_cost=False))
    fake.script("bare/model", Reply(include_usage=False))
    _, _, raw = await post_chat(session, fake, model="local/model")
    usage = json.loads(raw)["usage"]
    assert "cost" not in usage
    assert usage["completion_tokens"] >= 1
    _, _, raw = await post_chat(session, fake, model="bare/model")
    assert "usage" not in json.loads(raw)
    _, _, raw = await post_chat(session, fake, model="bare/model", stream=True)
    assert all(c["choices"] for c in sse_chunks(raw))


async def test_delay_s_delays_the_status_line(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """delay_s holds the answer back for at least that long."""
    fake.script(MODEL, Reply(text="late", delay_s=0.15))
    started = time.monotonic()
    status, _, _ = await post_chat(session, fake)
    assert status == 200
    assert time.monotonic() - started >= 0.15


# -- streaming -------------------------------------------------------------------------------


async def test_stamped_stream_carries_its_send_time_in_the_first_piece_only() -> None:
    """With stamp_first_token, the first content piece starts with the monotonic time it was
    sent (what the benchmarks time relays with); later pieces and plain replies are as usual."""
    text = "The answer to the question is forty-two."
    async with FakeUpstream(stamp_first_token=True) as stamping:
        stamping.script(MODEL, Reply(text=text, chunk_size=8), Reply(text=text))
        api = AsyncOpenAI(base_url=stamping.base_url, api_key="x", max_retries=0)
        before = time.monotonic_ns()
        stream = await api.chat.completions.create(model=MODEL, messages=USER, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        after = time.monotonic_ns()
        whole = await api.chat.completions.create(model=MODEL, messages=USER)
        await api.close()
    pieces = [p for p in pieces if p]
    sent = stamped_ns(pieces[0])
    assert sent is not None and before <= sent <= after
    assert pieces[0] == f"[sent_ns={sent}]" + text[:8]
    assert "".join(pieces[1:]) == text[8:]
    assert whole.choices[0].message.content == text


async def test_stream_text_reassembled_by_openai(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """A streamed answer arrives in chunk_size pieces after a role chunk and reassembles."""
    text = "The answer to the question is forty-two."
    fake.script(MODEL, Reply(text=text, chunk_size=4))
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks[1:] if c.choices]
    pieces = [p for p in pieces if p]
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) == 4
    assert len({c.id for c in chunks}) == 1
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert fake.received[0].stream is True


async def test_stream_ends_with_usage_chunk_then_done(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """After the finish chunk comes a usage chunk with choices == [], then data: [DONE]."""
    fake.script(MODEL, Reply(text="hi"))
    status, headers, raw = await post_chat(session, fake, stream=True)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    usage_chunk, finish_chunk = json.loads(data[-2]), json.loads(data[-3])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["cost"] > 0
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    assert finish_chunk["choices"][0]["delta"] == {}
    assert headers["X-Generation-Id"] == usage_chunk["id"]


async def test_streamed_parallel_tool_calls_never_repeat_id(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """Each streamed tool call names itself once, then sends only index and argument pieces."""
    calls = [
        FakeToolCall("lookup", '{"q": "weather in Paris"}', id="call_a"),
        FakeToolCall("convert", '{"from": "C", "to": "F"}', id="call_b"),
    ]
    fake.script(MODEL, Reply(tool_calls=calls, chunk_size=5))
    _, _, raw = await post_chat(session, fake, stream=True)
    fragments = [
        fragment
        for chunk in sse_chunks(raw)
        if chunk["choices"]
        for fragment in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    rebuilt: dict[int, dict[str, str]] = {}
    for fragment in fragments:
        index = fragment["index"]
        if index in rebuilt:
            assert set(fragment) == {"index", "function"}
            assert set(fragment["function"]) == {"arguments"}
            rebuilt[index]["arguments"] += fragment["function"]["arguments"]
        else:
            assert fragment["type"] == "function"
            assert fragment["function"]["arguments"] == ""
            rebuilt[index] = {"id": fragment["id"], "name": fragment["function"]["name"]}
            rebuilt[index]["arguments"] = ""
    assert rebuilt == {
        0: {"id": "call_a", "name": "lookup", "arguments": calls[0].arguments},
        1: {"id": "call_b", "name": "convert", "arguments": calls[1].arguments},
    }
    # openai's stream helper concatenates string fields: a repeated id would read "call_acall_a".
    async with client.chat.completions.stream(model=MODEL, messages=USER) as stream:
        final = await stream.get_final_completion()
    tool_calls = final.choices[0].message.tool_calls
    assert tool_calls is not None
    assert [(c.id, c.function.name) for c in tool_calls] == [
        ("call_a", "lookup"),
        ("call_b", "convert"),
    ]
    assert [json.loads(c.function.arguments) for c in tool_calls] == [
        {"q": "weather in Paris"},
        {"from": "C", "to": "F"},
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_comments_and_crlf_still_parse_with_openai(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """Keep-alive comments and CRLF line endings are on the wire and openai still parses them."""
    reply = Reply(text="comment tolerant", comments=True, crlf=True, chunk_size=3)
    fake.script(MODEL, reply)
    _, _, raw = await post_chat(session, fake, stream=True)
    assert raw.startswith(b": OPENROUTER PROCESSING\r\n\r\ndata: ")
    assert b"\n\n" not in raw.replace(b"\r\n", b"")
    assert raw.endswith(b"data: [DONE]\r\n\r\n")
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "comment tolerant"


async def test_mid_stream_error_raises_openai_api_error(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """stream_error_after_chunks sends OpenRouter's error event; openai raises APIError."""
    fake.script(MODEL, Reply(text="partial answer here", chunk_size=4, stream_error_after_chunks=2))
    _, _, raw = await post_chat(session, fake, stream=True)
    data = sse_data(raw)
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    assert last["error"]["code"] == 502
    assert last["choices"][0]["finish_reason"] == "error"
    assert [c["choices"][0]["delta"].get("content") for c in sse_chunks(raw)[1:3]] == [
        "part",
        "ial ",
    ]
    fake.script(MODEL, Reply(stream_error_after_chunks=0, error_message="Rate limit exceeded"))
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(openai.APIError) as caught:
        await drain(stream)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == "Rate limit exceeded"


async def test_cut_after_chunks_closes_connection(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """cut_after_chunks drops the TCP connection mid-body: no finish chunk, no [DONE]."""
    fake.script(MODEL, Reply(text="abcdefghij", chunk_size=2, cut_after_chunks=2))
    received: list[ChatCompletionChunk] = []
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, received)
    assert "".join(c.choices[0].delta.content or "" for c in received) == "abcd"
    assert all(c.choices[0].finish_reason is None for c in received)
    async with session.post(
        f"{fake.base_url}/chat/completions", json={"model": MODEL, "stream": True}
    ) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_no_done_sends_usage_but_no_done(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """no_done ends the stream after the usage chunk; openai ends iteration quietly."""
    fake.script(MODEL, Reply(text="done-less", no_done=True))
    _, _, raw = await post_chat(session, fake, stream=True)
    data = sse_data(raw)
    assert "[DONE]" not in data
    assert json.loads(data[-1])["choices"] == []
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "done-less"


async def test_finish_reason_override_and_choice_error_in_stream(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """finish_reason overrides the default; a streamed choice_error rides on the finish chunk."""
    fake.script(MODEL, Reply(text="x", finish_reason="content_filter"))
    _, _, raw = await post_chat(session, fake, stream=True)
    assert sse_chunks(raw)[-2]["choices"][0]["finish_reason"] == "content_filter"
    fake.script(MODEL, Reply(text="a b c d", choice_error="boom"))
    _, _, raw = await post_chat(session, fake, stream=True)
    finish = sse_chunks(raw)[-2]["choices"][0]
    assert finish["finish_reason"] == "error"
    assert finish["error"]["message"] == "boom"


# -- errors ----------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """A 429 reply carries Retry-After and extra headers; openai raises RateLimitError."""
    fake.script(MODEL, Reply(status=429, retry_after=1, headers={"x-should-retry": "false"}))
    status, headers, raw = await post_chat(session, fake)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert headers["x-should-retry"] == "false"
    assert json.loads(raw)["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER)
    assert caught.value.response.headers["retry-after"] == "1"
    fake.script(MODEL, Reply(status=503, retry_after=0.5))
    _, headers, _ = await post_chat(session, fake)
    assert headers["Retry-After"] == "0.5"


@pytest.mark.parametrize(
    ("shape", "status", "check"),
    [
        (
            "openrouter",
            402,
            lambda b: (
                b["error"]["code"] == 402
                and b["error"]["metadata"]["error_type"] == "payment_required"
                and set(b["error"]) == {"code", "message", "metadata"}
            ),
        ),
        (
            "openai",
            404,
            lambda b: (
                set(b["error"]) == {"message", "type", "param", "code"}
                and b["error"]["code"] == "model_not_found"
            ),
        ),
        (
            "vllm",
            400,
            lambda b: (
                b["object"] == "error"
                and b["type"] == "BadRequestError"
                and b["code"] == 400
                and "error" not in b
            ),
        ),
        ("string", 500, lambda b: isinstance(b["error"], str)),
    ],
)
async def test_json_error_shapes(
    fake: FakeUpstream,
    session: aiohttp.ClientSession,
    client: AsyncOpenAI,
    shape: Any,
    status: int,
    check: Any,
) -> None:
    """Each JSON error shape has its upstream's fields and maps to openai's status errors."""
    fake.script(MODEL, Reply(status=status, error_shape=shape, error_message="nope"))
    got_status, headers, raw = await post_chat(session, fake)
    assert got_status == status
    assert headers["Content-Type"].startswith("application/json")
    assert check(json.loads(raw))
    assert "nope" in raw.decode()
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER)
    assert caught.value.status_code == status


async def test_html_error_shape(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """The html shape is a CDN-style text/html page that openai still maps to its status."""
    fake.script(MODEL, Reply(status=502, error_shape="html"))
    status, headers, raw = await post_chat(session, fake, stream=True)
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    assert b"<title>502 Bad Gateway</title>" in raw
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=USER)


async def test_raw_body_override(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    """body sends a dict as JSON and a str as-is, with the scripted status."""
    fake.script(MODEL, Reply(status=418, body={"weird": True}), Reply(status=503, body="busy"))
    status, _, raw = await post_chat(session, fake)
    assert (status, json.loads(raw)) == (418, {"weird": True})
    status, headers, raw = await post_chat(session, fake)
    assert (status, raw) == (503, b"busy")
    assert headers["Content-Type"].startswith("text/plain")


async def test_malformed_json_body(
    fake: FakeUpstream, session: aiohttp.ClientSession, client: AsyncOpenAI
) -> None:
    """malformed answers 200 application/json with a truncated body that does not parse."""
    fake.script(MODEL, Reply(text="complete answer", malformed=True))
    status, headers, raw = await post_chat(session, fake)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert raw.startswith(b'{"id":"gen-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    with pytest.raises(json.JSONDecodeError):
        await client.chat.completions.create(model=MODEL, messages=USER)


async def test_malformed_stream_event(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """A malformed streamed reply sends a truncated data event that openai cannot decode."""
    fake.script(MODEL, Reply(malformed=True))
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(json.JSONDecodeError):
        await drain(stream)


async def test_require_key(session: aiohttp.ClientSession) -> None:
    """With require_key, a wrong bearer gets an OpenRouter-shaped 401 and the right one passes."""
    async with FakeUpstream(require_key="sk-test") as fake:
        status, _, raw = await post_chat(session, fake)
        assert status == 401
        assert json.loads(raw)["error"]["code"] == 401
        api = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        result = await api.chat.completions.create(model=MODEL, messages=USER)
        await api.close()
        assert result.choices[0].message.content == f"{MODEL} answer: What is six times seven?"
        assert fake.completed == [MODEL]


async def test_bad_json_and_missing_model_are_400(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Unparseable JSON and a missing model get OpenAI-shaped 400s and consume no script."""
    fake.script(MODEL, Reply(text="kept"))
    url = f"{fake.base_url}/chat/completions"
    async with session.post(
        url, data=b"{not json", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
    async with session.post(url, json={"messages": USER}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    _, _, raw = await post_chat(session, fake)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "kept"
    assert [r.model for r in fake.received] == ["", MODEL]


# -- cancellation ----------------------------------------------------------------------------


async def test_hang_with_client_timeout_is_cancelled(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """A hanging reply abandoned by a client timeout is recorded in cancelled, not completed."""
    fake.script(MODEL, Reply(hang=True))
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            f"{fake.base_url}/chat/completions",
            json={"model": MODEL, "messages": USER},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as response:
            await response.read()
    await wait_for(lambda: fake.cancelled)
    assert fake.cancelled == [MODEL]
    assert fake.completed == []


async def test_openai_timeout_on_hang_is_cancelled(fake: FakeUpstream) -> None:
    """openai's own request timeout also shows up as a cancelled upstream request."""
    fake.script(MODEL, Reply(hang=True))
    api = AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=0.1)
    with pytest.raises(openai.APITimeoutError):
        await api.chat.completions.create(model=MODEL, messages=USER)
    await api.close()
    await wait_for(lambda: fake.cancelled)
    assert fake.cancelled == [MODEL]


async def test_client_disconnect_mid_stream_is_cancelled(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Closing the connection during a slow stream records the model in cancelled."""
    fake.script(MODEL, Reply(text="s l o w l y", chunk_size=1, chunk_delay_s=0.05))
    async with session.post(
        f"{fake.base_url}/chat/completions", json={"model": MODEL, "stream": True}
    ) as response:
        first = await response.content.readuntil(b"\n\n")
        assert b'"role":"assistant"' in first
        response.close()
    await wait_for(lambda: fake.cancelled)
    assert fake.cancelled == [MODEL]
    assert fake.completed == []


async def test_stop_does_not_count_running_requests_as_cancelled(
    session: aiohttp.ClientSession,
) -> None:
    """Stopping the fake cuts off a hanging request quickly without recording a cancel."""
    fake = FakeUpstream()
    await fake.start()
    fake.script(MODEL, Reply(hang=True))
    pending = asyncio.ensure_future(post_chat(session, fake))
    await wait_for(lambda: fake.received)
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert fake.cancelled == []
    with pytest.raises(RuntimeError):
        _ = fake.base_url


# -- recording and scripting -----------------------------------------------------------------


async def test_received_records_headers_and_body(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """received keeps path, lower-cased headers, the parsed body, model, stream and arrival time."""
    before = time.monotonic()
    await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        temperature=0.2,
        extra_headers={"X-Title": "fusion tests"},
        extra_body={"provider": {"sort": "price"}},
    )
    [request] = fake.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer x"
    assert request.headers["x-title"] == "fusion tests"
    assert "x-stainless-retry-count" in request.headers
    assert request.body["temperature"] == 0.2
    assert request.body["provider"] == {"sort": "price"}
    assert request.body["messages"] == USER
    assert (request.model, request.stream) == (MODEL, False)
    assert before <= request.received_at <= time.monotonic()
    assert fake.requests_for(MODEL) == [request]
    assert fake.requests_for("other/model") == []


async def test_scripted_replies_consumed_in_order_last_repeats(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Replies for a slug are served in order and the last one repeats; slugs are independent."""
    fake.script(MODEL, Reply(status=429), Reply(text="first"), Reply(text="again"))
    fake.script("other/model", Reply(text="other"))
    results = []
    for _ in range(5):
        status, _, raw = await post_chat(session, fake)
        results.append(
            (status, json.loads(raw)["choices"][0]["message"]["content"] if status == 200 else None)
        )
    assert results == [(429, None), (200, "first"), (200, "again"), (200, "again"), (200, "again")]
    _, _, raw = await post_chat(session, fake, model="other/model")
    assert json.loads(raw)["choices"][0]["message"]["content"] == "other"
    assert fake.completed == [MODEL] * 5 + ["other/model"]


async def test_script_appends_to_queue(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    """Scripting again appends; once the queue runs dry the last served reply repeats."""

    async def answer() -> str:
        _, _, raw = await post_chat(session, fake)
        return str(json.loads(raw)["choices"][0]["message"]["content"])

    fake.script(MODEL, Reply(text="a"))
    assert [await answer(), await answer()] == ["a", "a"]
    fake.script(MODEL, Reply(text="b"), Reply(text="c"))
    assert [await answer(), await answer(), await answer()] == ["b", "c", "c"]


async def test_reset_clears_scripts_and_records(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """reset() forgets scripts, received, completed and cancelled."""
    fake.script(MODEL, Reply(text="scripted"))
    await post_chat(session, fake)
    fake.reset()
    assert (fake.received, fake.completed, fake.cancelled) == ([], [], [])
    _, _, raw = await post_chat(session, fake)
    assert json.loads(raw)["choices"][0]["message"]["content"].startswith(f"{MODEL} answer:")


async def test_models_listing_in_openrouter_shape(
    session: aiohttp.ClientSession,
) -> None:
    """GET /v1/models lists scripted and priced models with string USD-per-token prices."""
    async with FakeUpstream(prices={"cheap/model": (2.5e-7, 1e-6)}) as fake:
        fake.script(MODEL, Reply())
        async with session.get(f"{fake.base_url}/models") as response:
            listing = await response.json()
    assert listing["total_count"] == 2
    assert listing["links"] == {"next": None}
    assert "object" not in listing
    by_id = {m["id"]: m for m in listing["data"]}
    assert set(by_id) == {MODEL, "cheap/model"}
    assert by_id["cheap/model"]["pricing"]["prompt"] == "0.00000025"
    assert by_id["cheap/model"]["pricing"]["completion"] == "0.000001"
    assert by_id[MODEL]["pricing"]["completion"] == "0.000002"
    for model in listing["data"]:
        assert model["canonical_slug"] == model["id"]
        assert isinstance(model["context_length"], int)
        assert isinstance(model["created"], int)
        assert model["name"]


async def test_control_endpoints(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    """/_fake/script queues, /_fake/requests and /_fake/state report, /_fake/reset clears."""
    root = fake.base_url.removesuffix("/v1")
    script = {MODEL: [{"text": "over http"}, {"status": 503, "retry_after": 2}]}
    async with session.post(f"{root}/_fake/script", json=script) as response:
        assert response.status == 200
        assert (await response.json())["queued"] == {MODEL: 2}
    status, _, raw = await post_chat(session, fake)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "over http"
    status, headers, _ = await post_chat(session, fake)
    assert (status, headers["Retry-After"]) == (503, "2")
    async with session.get(f"{root}/_fake/requests") as response:
        received = await response.json()
    assert [r["model"] for r in received] == [MODEL, MODEL]
    assert received[0]["body"]["messages"] == USER
    assert received[0]["headers"]["content-type"] == "application/json"
    async with session.get(f"{root}/_fake/requests", params={"model": "none/such"}) as response:
        assert await response.json() == []
    async with session.get(f"{root}/_fake/state") as response:
        state = await response.json()
    assert state["completed"] == [MODEL, MODEL]
    assert state["cancelled"] == []
    async with session.post(f"{root}/_fake/reset") as response:
        assert response.status == 200
    assert fake.received == []


async def test_control_script_rejects_bad_replies(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """An unknown Reply field is a 400 naming the field, and nothing is queued."""
    root = fake.base_url.removesuffix("/v1")
    script = {MODEL: [{"text": "ok"}, {"dely_s": 1}]}
    async with session.post(f"{root}/_fake/script", json=script) as response:
        assert response.status == 400
        assert "dely_s" in (await response.json())["error"]["message"]
    _, _, raw = await post_chat(session, fake)
    assert json.loads(raw)["choices"][0]["message"]["content"].startswith(f"{MODEL} answer:")


# -- command line ----------------------------------------------------------------------------


def test_load_script_accepts_yaml_lists_and_single_replies(tmp_path: Path) -> None:
    """Script files map slugs to a reply list or a single reply, with tool calls as mappings."""
    path = tmp_path / "script.yaml"
    path.write_text(
        "a/model:\n  - {text: one}\n  - {status: 429, retry_after: 1}\n"
        "b/model: {tool_calls: [{name: f, arguments: '{}'}]}\n"
    )
    scripts = load_script(path)
    assert scripts["a/model"] == [Reply(text="one"), Reply(status=429, retry_after=1)]
    assert scripts["b/model"] == [Reply(tool_calls=[FakeToolCall("f", "{}")])]


def test_main_rejects_a_bad_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() returns 2 with a message on stderr when the script file is invalid."""
    path = tmp_path / "bad.json"
    path.write_text('{"a/model": [{"statuss": 500}]}')
    assert main(["--port", "0", "--script", str(path)]) == 2
    assert "statuss" in capsys.readouterr().err


async def test_module_runs_as_a_server(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """`python -m` prints the base URL, serves the script file and exits 0 on SIGTERM."""
    path = tmp_path / "script.json"
    path.write_text(json.dumps({MODEL: [{"text": "from file"}]}))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fusion_engine.testing.fake_upstream",
        "--port",
        "0",
        "--script",
        str(path),
        "--require-key",
        "k",
        "--delay-ms",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=5)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        payload = {"model": MODEL, "messages": USER}
        headers = {"Authorization": "Bearer k"}
        url = f"{base_url}/chat/completions"
        async with session.post(url, json=payload, headers=headers) as response:
            body = await response.json()
        assert body["choices"][0]["message"]["content"] == "from file"
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), timeout=5)
    assert returncode == 0
    assert b"RuntimeWarning" not in await process.stderr.read()


async def test_script_matching_answers_by_content(fake: FakeUpstream) -> None:
    """Matching rules pick a reply by the conversation's text, before the queue, and repeat."""
    fake.script("m/x", Reply(text="queued"))
    fake.script_matching("m/x", r"capital of France", Reply(text="Paris"))
    fake.script_matching("m/x", r"(?i)two plus two", Reply(text="4"))
    async with aiohttp.ClientSession() as session:

        async def ask(question: str) -> str:
            body = {"model": "m/x", "messages": [{"role": "user", "content": question}]}
            async with session.post(f"{fake.base_url}/chat/completions", json=body) as reply:
                payload = await reply.json()
                return str(payload["choices"][0]["message"]["content"])

        assert await ask("What is TWO PLUS TWO?") == "4"
        assert await ask("The capital of France?") == "Paris"
        assert await ask("The capital of France, again?") == "Paris"
        assert await ask("Something else") == "queued"


async def test_models_listing_can_be_made_to_fail(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """``models_reply`` with an error status makes GET /v1/models fail in that shape."""
    fake.models_reply = Reply(status=503, error_message="listing is down")
    async with session.get(f"{fake.base_url}/models") as response:
        assert response.status == 503
        body = await response.json()
    assert "listing is down" in json.dumps(body)
    fake.reset()
    async with session.get(f"{fake.base_url}/models") as response:
        assert response.status == 200


async def test_embeddings_with_the_openai_client(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    """POST /v1/embeddings in OpenAI's shape: one unit vector per input, the same for the same
    text; openai-python's default base64 encoding decodes to the floats a float request gets."""
    packed = await client.embeddings.create(model="vendor/embed", input=["a cat", "a dog"])
    assert packed.object == "list"
    assert packed.model == "vendor/embed"
    assert [item.index for item in packed.data] == [0, 1]
    first, second = (item.embedding for item in packed.data)
    assert len(first) == 8 and first != second
    assert sum(x * x for x in first) == pytest.approx(1.0, abs=1e-5)
    assert packed.usage.prompt_tokens == packed.usage.total_tokens == 4
    floats = await client.embeddings.create(
        model="vendor/embed", input="a cat", encoding_format="float", dimensions=3
    )
    assert len(floats.data[0].embedding) == 3
    again = await client.embeddings.create(model="vendor/embed", input="a cat", dimensions=8)
    assert again.data[0].embedding == pytest.approx(first, abs=1e-6)
    sent = fake.requests_for("vendor/embed")
    assert [r.path for r in sent] == ["/v1/embeddings"] * 3
    assert sent[0].body["encoding_format"] == "base64"


async def test_embeddings_scripted_error_and_bad_input(
    fake: FakeUpstream, client: AsyncOpenAI
) -> None:
    """A scripted status fails the model's embeddings; a bad input is OpenAI's 400."""
    fake.script("vendor/embed", Reply(status=429, error_shape="openai"))
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="vendor/embed", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="vendor/other", input=[{"no": "text"}])  # type: ignore[list-item]


async def test_embeddings_need_the_key_when_one_is_required() -> None:
    """With ``require_key`` a wrong bearer key is a 401, as on chat."""
    async with FakeUpstream(require_key="right") as fake:
        api = AsyncOpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await api.embeddings.create(model="vendor/embed", input="x")
        await api.close()
