"""Findings of the review of ``/v1/responses`` and ``/v1/messages``, each pinned by a test
against a real ``fusion serve`` on the fake upstream, driven by the official clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
from anthropic.types import ToolParam, ToolUseBlock
from openai import OpenAI
from openai.types.responses import ResponseFunctionToolCall

from fusion_engine.protocol import ChatCompletionChunk
from fusion_engine.responses_api import ResponsesStream, parse_request, translate
from fusion_engine.server.streaming import AnswerFeed
from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    E2E_FILES,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

FILES = E2E_FILES / "messages"
KEY = "review-key"
MEMBERS = ("b/one", "b/two")
JUDGE = "b/judge"
PLAIN = "plain/model"
CALLS = [
    FakeToolCall(name="get_weather", arguments='{"city":"Paris"}', id="call_a"),
    FakeToolCall(name="get_time", arguments='{"tz":"CET"}', id="call_b"),
]
RESPONSES_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
]
WEATHER: ToolParam = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    env = gateway_env(
        upstream.fake,
        KEY,
        panels=FILES / "panels",
        config=FILES / "gateway.yaml",
        FUSION_KEEPALIVE_S="0.3",
        FUSION_RELOAD_INTERVAL_S="0",
    )
    process = GatewayProcess(env)
    yield process
    process.stop()


@pytest.fixture
def openai_client(gateway: GatewayProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def script_panel(fake: FakeUpstream, judge: Reply) -> None:
    for slug in MEMBERS:
        fake.script(slug, Reply(tool_calls=judge.tool_calls, text=judge.text))
    fake.script(JUDGE, judge)


def test_streamed_and_stored_responses_name_their_items_alike(
    openai_client: OpenAI, fake: FakeUpstream
) -> None:
    """Found in review: the ``response`` built from a whole answer numbered its second and later
    function calls wrongly (``fc_…_1``, ``fc_…_3``), so the stored response (what ``GET`` and the
    next turn see) disagreed with the ids the stream had given the client (``fc_…_1``,
    ``fc_…_2``)."""
    script_panel(fake, Reply(text="Let me check.", tool_calls=CALLS, chunk_size=5))
    with openai_client.responses.stream(
        model="fusion/budget", input="Weather and time in Paris?", tools=RESPONSES_TOOLS
    ) as stream:
        streamed = stream.get_final_response()
    stored = openai_client.responses.retrieve(streamed.id)
    streamed_ids = [item.id for item in streamed.output]
    assert len(streamed_ids) == 3 and len(set(streamed_ids)) == 3
    assert [item.id for item in stored.output] == streamed_ids
    # Item ids are their output positions, as in the stream.
    calls = [item for item in stored.output if isinstance(item, ResponseFunctionToolCall)]
    assert [call.id.rsplit("_", 1)[1] for call in calls] == ["1", "2"]


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '{"city": "Par'])
def test_streamed_tool_input_that_is_no_json_object_is_an_empty_input(
    anthropic_client: anthropic.Anthropic, fake: FakeUpstream, arguments: str
) -> None:
    """Found in review: a judge's tool call whose arguments were not a JSON object went out as
    ``input_json_delta`` fragments as they were, so the anthropic SDK's stream helper raised
    ``ValueError`` (and ``[1, 2]`` became a list ``input``), while the same answer as JSON
    became ``input: {}``."""
    call = FakeToolCall(name="get_weather", arguments=arguments, id="call_z")
    script_panel(fake, Reply(tool_calls=[call], chunk_size=3))
    with anthropic_client.messages.stream(
        model="fusion/budget",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
    ) as stream:
        streamed = stream.get_final_message()
    uses = [block for block in streamed.content if isinstance(block, ToolUseBlock)]
    assert [(use.name, use.input) for use in uses] == [("get_weather", {})]
    assert streamed.stop_reason == "tool_use"


def test_streamed_tool_input_still_arrives_as_input_json_delta(
    anthropic_client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    """Input that begins a JSON object still streams in pieces as it comes."""
    script_panel(fake, Reply(text="Checking.", tool_calls=CALLS, chunk_size=3))
    with anthropic_client.messages.stream(
        model="fusion/budget",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, {"name": "get_time", "input_schema": {"type": "object"}}],
    ) as stream:
        deltas = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        streamed = stream.get_final_message()
    assert "".join(deltas) == '{"city":"Paris"}{"tz":"CET"}'
    assert len(deltas) > 2
    uses = [block for block in streamed.content if isinstance(block, ToolUseBlock)]
    assert [use.input for use in uses] == [{"city": "Paris"}, {"tz": "CET"}]


def test_function_call_output_images_follow_the_tool_messages(
    openai_client: OpenAI, fake: FakeUpstream
) -> None:
    """Found in review: a ``function_call_output`` with an ``input_image`` became a ``tool``
    message with an ``image_url`` part, which chat completions refuse (tool messages take text
    only: OpenAI answers 400). As on the Messages API, the tool message now says an image
    follows and the images go in one user message after the turn's tool messages."""
    fake.script(PLAIN, Reply(text="A red square."))
    image = "data:image/png;base64,iVBORw0KGgo="
    openai_client.responses.create(
        model=PLAIN,
        input=[
            {"role": "user", "content": "Take two screenshots."},
            {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "shot", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [
                    {"type": "input_text", "text": "first"},
                    {"type": "input_image", "image_url": image},
                ],
            },
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "second"}],
            },
        ],
        tools=[{"type": "function", "name": "shot", "parameters": {"type": "object"}}],
    )
    sent = fake.requests_for(PLAIN)[-1].body["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "tool", "tool", "user"]
    first, second = sent[2], sent[3]
    assert first["tool_call_id"] == "c1" and isinstance(first["content"], str)
    assert first["content"].startswith("first") and "image 1" in first["content"]
    assert second == {"role": "tool", "tool_call_id": "c2", "content": "second"}
    assert sent[4]["content"] == [{"type": "image_url", "image_url": {"url": image}}]


@pytest.mark.parametrize(
    ("escaped", "received"),
    [
        (rb"cut \ud83d", "cut \ufffd"),  # a high surrogate alone (an emoji cut in half)
        (rb"\ude00 tail", "\ufffd tail"),  # a low surrogate alone
        (rb"\ud83d\ude00 \\ud800", "\U0001f600 \\ud800"),  # a pair, and an escaped backslash
    ],
)
def test_a_lone_surrogate_escape_is_no_400(
    gateway: GatewayProcess, fake: FakeUpstream, escaped: bytes, received: str
) -> None:
    """Found in review: ``"\\ud83d"`` alone is valid JSON, and what JavaScript's
    ``JSON.stringify`` writes for a string cut in the middle of an emoji (Claude Code and Codex
    truncate long tool output by UTF-16 units), but msgspec refuses it: the request was a 400
    ("Input data was truncated"), which Claude Code retries six times and then gives up on. A
    lone surrogate now reads as U+FFFD."""
    fake.script(PLAIN, Reply(text="Noted."))
    body = (
        b'{"model": "' + PLAIN.encode() + b'", "max_tokens": 50, "messages": '
        b'[{"role": "user", "content": "' + escaped + b'"}]}'
    )
    reply = httpx.post(
        f"{gateway.base_url}/v1/messages",
        content=body,
        headers={"x-api-key": KEY, "content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert fake.requests_for(PLAIN)[-1].body["messages"][-1]["content"] == received


def test_a_streamed_call_without_an_id_keeps_one_id_in_the_stream_and_the_store() -> None:
    """Found in review: a provider that streams a tool call without an ``id`` (some do) got a
    random ``call_id`` in the Responses stream but ``call_0`` in the answer the gateway stored
    from it, so the client's ``function_call_output`` on the next turn
    (``previous_response_id``) named a call the stored conversation did not have."""
    context = translate(parse_request({"model": "plain/model", "input": "hi"})).context
    feed = AnswerFeed(ResponsesStream(context))
    chunk = msgspec.convert(
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"name": "get_weather", "arguments": "{}"}}
        ]}, "finish_reason": "tool_calls"}]},
        ChatCompletionChunk,
    )  # fmt: skip
    streamed = feed.chunk(chunk, final_parts=True) + feed.renderer.close()
    done = [event for event in _sse_data(streamed) if event["type"] == "response.output_item.done"]
    stored = context.response_of(feed.answer()).output
    assert [event["item"]["call_id"] for event in done] == [stored[0].call_id]  # type: ignore[union-attr]
    # Unique, not call_0 on every turn: a conversation's calls must not share an id.
    assert stored[0].call_id != "call_0"  # type: ignore[union-attr]


def _sse_data(stream: bytes) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(line.removeprefix(b"data: "))
        for line in stream.split(b"\n")
        if line.startswith(b"data: ")
    ]


def test_list_limits_count_the_translated_request(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Found in review: admission counted the client's own lists only, so a Messages turn of 30
    ``tool_result`` blocks (30 chat messages) or a Responses ``namespace`` of 30 tools (30 chat
    tools) reached the provider past ``max_messages: 20`` / ``max_tools: 16``."""
    fake.script(PLAIN, Reply(text="Done."))
    count = 30
    uses = [{"type": "tool_use", "id": f"t{i}", "name": "t", "input": {}} for i in range(count)]
    results = [
        {"type": "tool_result", "tool_use_id": f"t{i}", "content": "r"} for i in range(count)
    ]
    messages = {
        "model": PLAIN,
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": uses},
            {"role": "user", "content": results},
        ],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    }
    reply = httpx.post(
        f"{gateway.base_url}/v1/messages", json=messages, headers={"x-api-key": KEY}, timeout=30
    )
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["type"] == "request_too_large"
    namespace = {
        "type": "namespace",
        "name": "ns",
        "tools": [{"type": "function", "name": f"f{i}"} for i in range(count)],
    }
    reply = httpx.post(
        f"{gateway.base_url}/v1/responses",
        json={"model": PLAIN, "input": "Go.", "tools": [namespace]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert reply.status_code == 413, reply.text
    assert fake.requests_for(PLAIN) == []


def test_a_conversation_grown_past_the_body_limit_through_stored_turns_is_a_413(
    openai_client: OpenAI, fake: FakeUpstream
) -> None:
    """Found in review: only the message count of a conversation assembled from stored turns
    was limited, so a chain of requests each under ``max_body_bytes`` (1 MiB here) grew one
    conversation without bound in bytes, each turn sent whole to the provider (and stored
    again in full)."""
    fake.script(PLAIN, Reply(text="Noted."))
    chunk = "x" * 400_000
    first = openai_client.responses.create(model=PLAIN, input=chunk)
    second = openai_client.responses.create(model=PLAIN, input=chunk, previous_response_id=first.id)
    with pytest.raises(openai.APIStatusError) as refused:
        openai_client.responses.create(model=PLAIN, input=chunk, previous_response_id=second.id)
    assert refused.value.status_code == 413
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len(fake.requests_for(PLAIN)) == 2
