"""``POST /v1/messages`` end to end: a real ``fusion serve`` on the fake upstream, driven by the
official ``anthropic`` client (and raw HTTP where the wire itself is the point).

Fused and passed-through answers, JSON and SSE, the stream helper, a tool round trip, token
counting, errors in Anthropic's shape with the right status, every request Claude Code was
recorded sending, and the fault matrix of the chat route (a member failing, all failing, the
judge failing, pings while the panel works, a client leaving).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.lib.streaming import ParsedMessageStreamEvent
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageParam,
    ParsedMessage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    TextBlock,
    TextDelta,
    ToolParam,
    ToolUseBlock,
)

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    CITY_PARAMETERS,
    E2E_FILES,
    FakeInThread,
    GatewayProcess,
    cancelled_among,
    config_variant,
    fault_matrix_env,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    script_fused_panel,
    wait_until,
)

FILES = E2E_FILES / "messages"
RECORDINGS = sorted(
    (Path(__file__).parent / "fixtures" / "agent_recordings").glob("claude_*/*.json")
)
KEY = "messages-key"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
TRIO = ("m/one", "m/two", "m/three")
JUDGE, BACKUP = "m/judge", "m/judge-backup"
PATIENT = ("p/one", "p/two")
PATIENT_JUDGE = "p/judge"
PLAIN = "e2e/plain"
VERDICT = "Paris is the capital of France."
USER: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": CITY_PARAMETERS,
}


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    # Only deterministic requests (temperature 0) are cached: the other tests are not.
    env = fault_matrix_env(upstream.fake, KEY, FILES, FUSION_CACHE="memory")
    with GatewayProcess(env) as process:
        yield process


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def script_trio(fake: FakeUpstream, judge: Reply | None = None, **members: Reply) -> None:
    """Each member says Paris in its own words, the judge gives VERDICT; ``two=`` etc. replace a
    member's reply."""
    answers = {slug: Reply(text=f"{slug} says Paris") for slug in TRIO}
    script_fused_panel(fake, answers, JUDGE, judge or Reply(text=VERDICT, chunk_size=6), **members)


def post(gateway: GatewayProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/messages", json=body, headers={**HEADERS, **headers}, timeout=30
    )


def sse(reply: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of a whole SSE body; every event has both lines."""
    events = []
    for chunk in reply.text.split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append((lines["event"], data))
    return events


def text_of(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def anthropic_error(reply: httpx.Response, status: int, kind: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind
    assert set(body["error"]) == {"type", "message"}
    message: str = body["error"]["message"]
    assert message
    return message


# --- the official client -------------------------------------------------------------------------


def test_fused_message(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    script_trio(fake)
    message = client.messages.create(
        model="fusion/trio", max_tokens=200, messages=USER, system="Answer in one sentence."
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "fusion/trio"
    assert [block.type for block in message.content] == ["text"]
    assert text_of(message) == VERDICT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    extra = message.model_extra or {}
    assert [member["model"] for member in extra["fusion"]["members"]] == list(TRIO)
    judge = fake.requests_for(JUDGE)[0].body
    assert judge["max_tokens"] == 200
    member = fake.requests_for("m/one")[0].body
    assert member["messages"][0] == {"role": "system", "content": "Answer in one sentence."}


def test_alias_and_bearer_auth(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    script_trio(fake)
    with anthropic.Anthropic(base_url=gateway.base_url, auth_token=KEY, max_retries=0) as sdk:
        message = sdk.messages.create(model="fusion-trio", max_tokens=50, messages=USER)
    assert message.model == "fusion-trio"
    assert text_of(message) == VERDICT


def test_fused_stream_through_create(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    script_trio(fake)
    events = list(
        client.messages.create(model="fusion/trio", max_tokens=200, messages=USER, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    text = "".join(
        event.delta.text
        for event in events
        if isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, TextDelta)
    )
    assert text == VERDICT
    delta = events[-2]
    assert isinstance(delta, RawMessageDeltaEvent)
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0
    assert (delta.model_extra or {})["fusion"]["panel"] == "trio"
    assert fake.requests_for(JUDGE)[0].body["stream"] is True


def test_fused_stream_helper(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    script_trio(fake)
    with client.messages.stream(model="fusion/trio", max_tokens=200, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == VERDICT
    assert text_of(final) == VERDICT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_cached_answers_come_back_whole(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """A deterministic fused request is cached; the cached answer is the same message, and
    streamed it arrives in one delta."""
    script_trio(fake)
    body = {
        "model": "fusion/trio",
        "max_tokens": 50,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Cache me: what is the capital of France?"}],
    }
    first = post(gateway, body)
    assert first.headers["x-fusion-cache"] == "miss"
    fake.reset()
    again = post(gateway, body)
    assert again.headers["x-fusion-cache"] == "hit"
    assert again.json()["content"] == first.json()["content"]
    streamed = post(gateway, {**body, "stream": True})
    events = sse(streamed)
    deltas = [data["delta"]["text"] for kind, data in events if kind == "content_block_delta"]
    assert deltas == [VERDICT]
    assert [kind for kind, _ in events][-2:] == ["message_delta", "message_stop"]
    assert fake.received == []


def test_passthrough_message_and_stream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.script(PLAIN, Reply(text="plain answer", prompt_tokens=7, completion_tokens=2))
    message = client.messages.create(
        model=PLAIN, max_tokens=20, messages=USER, extra_body={"temperature": 0.1}
    )
    assert text_of(message) == "plain answer"
    assert message.model == PLAIN
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)
    assert "fusion" not in (message.model_extra or {})
    sent = fake.requests_for(PLAIN)[0]
    assert sent.body["max_tokens"] == 20 and sent.body["temperature"] == 0.1
    assert sent.headers["authorization"] == "Bearer provider-secret-key"

    fake.script(PLAIN, Reply(text="streamed plain answer", chunk_size=3, completion_tokens=3))
    with client.messages.stream(model=PLAIN, max_tokens=20, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "streamed plain answer"
    assert final.usage.output_tokens == 3
    assert fake.requests_for(PLAIN)[1].body["stream_options"] == {"include_usage": True}


def test_passthrough_tool_calls(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    """A provider's tool calls become tool_use blocks; broken arguments become {} and a note,
    never a failed reply."""
    calls = [
        FakeToolCall("get_weather", '{"city": "Rome"}', id="call_ok"),
        FakeToolCall("get_weather", '{"city": ', id="call_broken"),
    ]
    fake.script(PLAIN, Reply(tool_calls=calls))
    message = client.messages.create(
        model=PLAIN,
        max_tokens=50,
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    uses = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert [(use.id, use.input) for use in uses] == [
        ("call_ok", {"city": "Rome"}),
        ("call_broken", {}),
    ]
    assert "not a JSON object" in text_of(message)
    assert message.stop_reason == "tool_use"
    sent = fake.requests_for(PLAIN)[0].body
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


def test_passthrough_stream_breaking_off_is_an_error_event(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    fake.script(
        PLAIN, Reply(text="a long plain answer " * 5, chunk_size=4, stream_error_after_chunks=3)
    )
    reply = post(gateway, {"model": PLAIN, "max_tokens": 50, "messages": USER, "stream": True})
    assert reply.status_code == 200
    events = sse(reply)
    assert [kind for kind, _ in events][:2] == ["message_start", "content_block_start"]
    kind, data = events[-1]
    assert kind == "error" and set(data["error"]) == {"type", "message"}


def stream_with_weather(
    client: anthropic.Anthropic, messages: list[MessageParam]
) -> tuple[list[ParsedMessageStreamEvent[None]], ParsedMessage[None]]:
    """A streamed request to the trio offering WEATHER: the SDK's events and its final message."""
    with client.messages.stream(
        model="fusion/trio", max_tokens=200, messages=messages, tools=[WEATHER]
    ) as stream:
        events = list(stream)
        return events, stream.get_final_message()


def test_tool_round_trip(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    """The judge proposes a tool call; the client runs it and sends the result; final text."""
    script_trio(
        fake, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}', id="call_w1")])
    )
    first = client.messages.create(
        model="fusion/trio",
        max_tokens=200,
        messages=USER,
        tools=[WEATHER],
    )
    assert first.stop_reason == "tool_use"
    (call,) = [block for block in first.content if isinstance(block, ToolUseBlock)]
    assert (call.id, call.name, call.input) == ("call_w1", "get_weather", {"city": "Paris"})
    judge_tools = fake.requests_for(JUDGE)[0].body["tools"]
    assert judge_tools[0]["function"]["name"] == "get_weather"

    fake.reset()
    script_trio(fake, Reply(text="It is sunny in Paris.", chunk_size=5))
    history: list[MessageParam] = [
        *USER,
        first.to_param(),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}],
        },
    ]
    _, final = stream_with_weather(client, history)
    assert text_of(final) == "It is sunny in Paris."
    assert final.stop_reason == "end_turn"
    sent = fake.requests_for("m/one")[0].body["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_w1"
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21C"}


def test_streamed_tool_call(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    """Tool input arrives as input_json_delta chunks the SDK assembles into the object."""
    arguments = '{"city": "Paris, the capital of France"}'
    script_trio(fake, Reply(tool_calls=[FakeToolCall("get_weather", arguments)], chunk_size=5))
    events, final = stream_with_weather(client, USER)
    (call,) = final.content
    assert isinstance(call, ToolUseBlock) and call.input == {"city": "Paris, the capital of France"}
    assert final.stop_reason == "tool_use"
    starts = [event for event in events if isinstance(event, RawContentBlockStartEvent)]
    assert isinstance(starts[0].content_block, ToolUseBlock)
    assert starts[0].content_block.input == {}
    pieces = [
        event
        for event in events
        if isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, InputJSONDelta)
    ]
    assert len(pieces) > 1


def test_count_tokens(client: anthropic.Anthropic) -> None:
    small = client.messages.count_tokens(model="fusion/trio", messages=USER)
    large = client.messages.count_tokens(
        model="fusion/trio",
        messages=USER,
        system="x" * 3500,
        tools=[WEATHER],
    )
    assert 1 <= small.input_tokens < 30
    assert large.input_tokens > small.input_tokens + 1000


# --- errors in Anthropic's shape -----------------------------------------------------------------


def test_missing_and_wrong_keys_are_401s(gateway: GatewayProcess) -> None:
    body = {"model": "fusion/trio", "max_tokens": 5, "messages": USER}
    anthropic_error(
        httpx.post(f"{gateway.base_url}/v1/messages", json=body), 401, "authentication_error"
    )
    anthropic_error(post(gateway, body, **{"x-api-key": "wrong"}), 401, "authentication_error")
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key="wrong", max_retries=0) as sdk,
        pytest.raises(anthropic.AuthenticationError),
    ):
        sdk.messages.create(model="fusion/trio", max_tokens=5, messages=USER)


def test_bad_bodies_are_400s(gateway: GatewayProcess, client: anthropic.Anthropic) -> None:
    message = anthropic_error(
        post(gateway, {"model": "fusion/trio", "messages": USER}), 400, "invalid_request_error"
    )
    assert "max_tokens" in message
    anthropic_error(
        post(gateway, {"model": "fusion/trio", "max_tokens": 5, "messages": "hi"}),
        400,
        "invalid_request_error",
    )
    reply = httpx.post(
        f"{gateway.base_url}/v1/messages", content=b"{not json", headers=HEADERS, timeout=30
    )
    anthropic_error(reply, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="fusion/trio", max_tokens=0, messages=USER)


def test_unknown_panel_is_a_404(gateway: GatewayProcess, client: anthropic.Anthropic) -> None:
    body = {"model": "fusion/nope", "max_tokens": 5, "messages": USER}
    assert "nope" in anthropic_error(post(gateway, body), 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="fusion/nope", max_tokens=5, messages=USER)


def test_too_many_messages_is_a_413(gateway: GatewayProcess) -> None:
    body = {"model": "fusion/trio", "max_tokens": 5, "messages": USER * 21}
    anthropic_error(post(gateway, body), 413, "request_too_large")
    count = httpx.post(
        f"{gateway.base_url}/v1/messages/count_tokens", json=body, headers=HEADERS, timeout=30
    )
    anthropic_error(count, 413, "request_too_large")


def test_body_over_the_size_limit_is_a_413(gateway: GatewayProcess) -> None:
    body = {"model": "fusion/trio", "max_tokens": 5, "messages": USER, "system": "x" * 1_100_000}
    anthropic_error(post(gateway, body), 413, "request_too_large")


@pytest.fixture(scope="module")
def limited_gateway(
    upstream: FakeInThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The same gateway with one request a minute per key."""
    config = config_variant(
        tmp_path_factory.mktemp("limited"),
        FILES / "gateway.yaml",
        append="rate_limit: {requests_per_minute: 1}\n",
    )
    env = gateway_env(upstream.fake, KEY, panels=FILES / "panels", config=config)
    with GatewayProcess(env) as process:
        yield process


def test_over_the_rate_limit_is_a_429(limited_gateway: GatewayProcess, fake: FakeUpstream) -> None:
    script_trio(fake)
    body = {"model": "fusion/trio", "max_tokens": 5, "messages": USER}
    # Three in a row: a minute boundary can fall between two of them, not between all three.
    replies = [post(limited_gateway, body) for _ in range(3)]
    limited = [reply for reply in replies if reply.status_code == 429]
    assert limited, [reply.status_code for reply in replies]
    anthropic_error(limited[0], 429, "rate_limit_error")
    assert int(limited[0].headers["retry-after"]) >= 1


def test_every_member_rate_limited_is_a_429(
    gateway: GatewayProcess, fake: FakeUpstream, client: anthropic.Anthropic
) -> None:
    for slug in TRIO:
        fake.script(slug, Reply(status=429, retry_after=2, error_message="slow down"))
    reply = post(gateway, {"model": "fusion/trio", "max_tokens": 5, "messages": USER})
    anthropic_error(reply, 429, "rate_limit_error")
    assert reply.headers["retry-after"] == "2"


def test_passthrough_errors_keep_their_status(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    fake.script(PLAIN, Reply(status=404, error_message="no such model here"))
    reply = post(gateway, {"model": PLAIN, "max_tokens": 5, "messages": USER})
    assert "no such model" in anthropic_error(reply, 404, "not_found_error")


# --- Claude Code, as recorded --------------------------------------------------------------------


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_recorded_claude_code_requests_are_answered(
    gateway: GatewayProcess, fake: FakeUpstream, path: Path
) -> None:
    """Each request Claude Code sent (its headers, ``?beta=true``, its whole body) gets a 200,
    streamed or not, as it asked."""
    recorded = json.loads(path.read_text())
    skipped = {"x-api-key", "authorization", "content-length", "host", "accept-encoding"}
    headers = {
        name: value for name, value in recorded["headers"].items() if name.lower() not in skipped
    }
    body = recorded["body"]
    reply = httpx.post(
        f"{gateway.base_url}/v1/messages?{recorded['query']}",
        json=body,
        headers={**headers, "x-api-key": KEY},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    if body["stream"]:
        events = sse(reply)
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert kinds.count("content_block_start") == kinds.count("content_block_stop") >= 1
    else:
        assert reply.json()["content"][0]["type"] == "text"
    judge = fake.requests_for("b/judge")[0].body
    assert len(judge["tools"]) == len(body["tools"])


# --- faults --------------------------------------------------------------------------------------


def test_one_member_failing_is_reported(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    script_trio(fake, two=Reply(status=403, error_message="member refused"))
    message = client.messages.create(model="fusion/trio", max_tokens=50, messages=USER)
    assert text_of(message) == VERDICT
    members = (message.model_extra or {})["fusion"]["members"]
    assert [member["error"] is not None for member in members] == [False, True, False]


def test_every_member_failing_is_an_anthropic_error(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    script_trio(fake, **{name: Reply(status=403) for name in ("one", "two", "three")})
    body = {"model": "fusion/trio", "max_tokens": 50, "messages": USER}
    anthropic_error(post(gateway, body), 502, "api_error")
    # Streamed: the panel fails within the held status line, so still a JSON error.
    anthropic_error(post(gateway, {**body, "stream": True}), 502, "api_error")
    assert fake.requests_for(JUDGE) == []


def test_judge_failing_hands_over_to_the_fallback(
    client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    script_trio(fake, Reply(status=403, error_message="judge refused"))
    fake.script(BACKUP, Reply(text="backup verdict"))
    message = client.messages.create(model="fusion/trio", max_tokens=50, messages=USER)
    assert text_of(message) == "backup verdict"


def test_every_judge_failing_streams_a_member_answer_marked_degraded(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    script_trio(fake, Reply(status=403))
    fake.script(BACKUP, Reply(status=403))
    reply = post(
        gateway, {"model": "fusion/trio", "max_tokens": 50, "messages": USER, "stream": True}
    )
    assert reply.status_code == 200
    events = sse(reply)
    text = "".join(data["delta"]["text"] for kind, data in events if kind == "content_block_delta")
    assert text in {f"{slug} says Paris" for slug in TRIO}
    delta = next(data for kind, data in events if kind == "message_delta")
    assert delta["fusion"]["degraded"] == "judge_failed"
    assert events[-1][0] == "message_stop"


def test_pings_while_the_panel_works(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    script_trio(fake, **{name: Reply(text="slow Paris", delay_s=1.0) for name in ("one", "two")})
    reply = post(
        gateway, {"model": "fusion/trio", "max_tokens": 50, "messages": USER, "stream": True}
    )
    events = sse(reply)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start"
    first_block = kinds.index("content_block_start")
    assert "ping" in kinds[1:first_block]
    assert kinds[-1] == "message_stop"


def test_mid_stream_error_is_an_error_event(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    script_trio(fake, Reply(text=VERDICT * 4, chunk_size=4, stream_error_after_chunks=3))
    reply = post(
        gateway, {"model": "fusion/trio", "max_tokens": 50, "messages": USER, "stream": True}
    )
    assert reply.status_code == 200
    events = sse(reply)
    assert any(kind == "content_block_delta" for kind, _ in events)
    kind, data = events[-1]
    assert kind == "error" and data["type"] == "error"
    assert set(data["error"]) == {"type", "message"}
    fake.script(JUDGE, Reply(text=VERDICT * 4, chunk_size=4, stream_error_after_chunks=3))
    for slug in TRIO:
        fake.script(slug, Reply(text="Paris"))
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key=KEY, max_retries=0) as sdk,
        sdk.messages.stream(model="fusion/trio", max_tokens=50, messages=USER) as stream,
        pytest.raises(anthropic.APIStatusError),
    ):
        stream.get_final_message()


def test_disconnect_during_a_streamed_panel_cancels_every_member(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    body = {"model": "fusion/patient", "max_tokens": 50, "messages": USER, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/messages", json=body, headers=HEADERS, timeout=30
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line == "event: ping":
                break
    assert wait_until(lambda: cancelled_among(fake, PATIENT) == sorted(PATIENT), timeout_s=5)
    assert fake.requests_for(PATIENT_JUDGE) == []


def test_disconnect_while_waiting_cancels_every_member(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    for slug in PATIENT:
        fake.script(slug, Reply(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/messages",
            json={"model": "fusion/patient", "max_tokens": 50, "messages": USER},
            headers=HEADERS,
            timeout=0.5,
        )
    assert wait_until(lambda: cancelled_among(fake, PATIENT) == sorted(PATIENT), timeout_s=5)


def test_openapi_documents_the_messages_routes(gateway: GatewayProcess) -> None:
    """Both routes are in /docs/openapi.json with Anthropic's error shape; only /v1/messages
    requires max_tokens."""
    paths = httpx.get(f"{gateway.base_url}/docs/openapi.json", timeout=30).json()["paths"]
    create, count = paths["/v1/messages"]["post"], paths["/v1/messages/count_tokens"]["post"]
    for operation in (create, count):
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]
        assert error["required"] == ["type", "error"]
        assert "Retry-After" in operation["responses"]["429"]["headers"]
    request = create["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["model", "messages", "max_tokens"]
    assert request["properties"]["messages"]["maxItems"] == 20  # this gateway's limit
    assert set(create["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    counted = count["requestBody"]["content"]["application/json"]["schema"]
    assert "max_tokens" not in counted["required"]


@pytest.mark.parametrize("status", [401, 403])
def test_a_provider_refusing_the_gateways_key_is_not_the_clients_auth_error(
    gateway: GatewayProcess, fake: FakeUpstream, status: int
) -> None:
    """The provider refusing the gateway's own key is the gateway's trouble: a 502 api_error,
    never the 401/403 that makes Claude Code tell its user their key is wrong."""
    fake.script(PLAIN, Reply(status=status, error_message="bad provider key"))
    reply = post(gateway, {"model": PLAIN, "max_tokens": 5, "messages": USER})
    assert "bad provider key" in anthropic_error(reply, 502, "api_error")
