"""The real gateway (`fusion serve`: gunicorn + uvicorn worker) driven with the official openai
client, against the fake upstream on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    CITY_PARAMETERS,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    script_fused_panel,
    wait_until,
)

KEYS = ("key-one", "key-two")
ALPHA, BETA, GAMMA = "e2e/alpha", "e2e/beta", "e2e/gamma"
JUDGE, BACKUP = "e2e/judge", "e2e/judge-backup"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": CITY_PARAMETERS,
    },
}
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(upstream.fake, ",".join(KEYS)))
    yield process
    process.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=KEYS[0], max_retries=0, timeout=30)


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as session:
        yield session


def script_trio(fake: FakeUpstream, judge: Reply | None = None, **members: Reply) -> None:
    """Script the trio panel; ``alpha=``, ``beta=``, ``gamma=`` replace a member's reply."""
    defaults = {
        ALPHA: Reply(text="Paris.", cost=0.001),
        BETA: Reply(text="The capital of France is Paris.", cost=0.002),
        GAMMA: Reply(text="It is Paris.", cost=0.003),
    }
    verdict = judge or Reply(text="Paris is the capital of France.", cost=0.01)
    script_fused_panel(fake, defaults, JUDGE, verdict, **members)


# --- models, panels, health ------------------------------------------------------------------


def test_models_lists_one_fusion_model_per_panel(client: OpenAI) -> None:
    """GET /v1/models lists fusion/<panel> for every loaded panel first, in OpenAI's list shape
    (the passthrough provider's models follow: tests/test_model_ids_e2e.py)."""
    ids = [model.id for model in client.models.list()]
    assert sorted(ids[:3]) == ["fusion/patient", "fusion/quick", "fusion/trio"]
    assert not any(model.startswith("fusion/") for model in ids[3:])


def test_open_routes_need_no_key(gateway: GatewayProcess) -> None:
    """/health, /ready, /v1/models, /panels and /docs answer without a key."""
    with httpx.Client(base_url=gateway.base_url) as anonymous:
        health = anonymous.get("/health").json()
        assert health["provider_key_configured"] is True
        assert health["panels"] == 3
        assert anonymous.get("/ready").status_code == 200
        assert anonymous.get("/v1/models").status_code == 200
        panel = anonymous.get("/panels/trio").json()
        assert [m["slug"] for m in panel["models"]] == [ALPHA, BETA, GAMMA]
        assert len(anonymous.get("/panels").json()["data"]) == 3
        assert anonymous.get("/docs").status_code == 200
        schema = anonymous.get("/docs/openapi.json").json()
        assert "/v1/chat/completions" in schema["paths"]


def test_unknown_panel_page_is_404(http: httpx.Client) -> None:
    """GET /panels/<unknown> is a 404 in OpenAI's error shape."""
    reply = http.get("/panels/nope")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


# --- fused completions -----------------------------------------------------------------------


def test_fused_completion(client: OpenAI, fake: FakeUpstream) -> None:
    """A fused reply is a chat.completion with the judge's answer, summed usage and fusion detail."""
    script_trio(fake)
    reply = client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert reply.object == "chat.completion"
    assert reply.model == "fusion/trio"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == "Paris is the capital of France."
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage is not None
    assert usage.model_extra is not None and usage.model_extra["cost"] == pytest.approx(0.016)
    members_in = sum(r.body["messages"].__len__() for r in fake.received)  # every call was made
    assert members_in > 0 and len(fake.received) == 4
    detail = (reply.model_extra or {})["fusion"]
    assert detail["panel"] == "trio"
    assert [m["model"] for m in detail["members"]] == [ALPHA, BETA, GAMMA]
    assert detail["judge"]["model"] == JUDGE
    assert detail["total_cost"] == pytest.approx(0.016)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (
        usage.prompt_tokens
        == sum(m["tokens_in"] for m in detail["members"]) + detail["judge"]["tokens_in"]
    )


def test_provider_key_goes_upstream_and_client_key_does_not(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Upstream calls carry the provider key, never the client's bearer key."""
    script_trio(fake)
    client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    authorizations = {r.headers["authorization"] for r in fake.received}
    assert authorizations == {"Bearer provider-secret-key"}


async def test_fused_completion_async_client(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """The async openai client gets the same fused reply."""
    script_trio(fake)
    async with AsyncOpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=KEYS[1], max_retries=0
    ) as aclient:
        reply = await aclient.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Paris is the capital of France."


def test_request_fields_reach_members_and_judge(client: OpenAI, fake: FakeUpstream) -> None:
    """Sampling goes to members, shaping fields to the judge, unknown fields to both."""
    script_trio(fake)
    client.chat.completions.create(
        model="fusion/trio",
        messages=[{"role": "system", "content": "Be brief."}, *USER],  # type: ignore[list-item]
        temperature=0.2,
        seed=3,
        max_tokens=77,
        stop=["\n\n"],
        user="user-42",
        extra_body={"logit_bias": {"50256": -100}},
    )
    member = fake.requests_for(ALPHA)[0].body
    judge = fake.requests_for(JUDGE)[0].body
    assert (member["temperature"], member["seed"], member["user"]) == (0.2, 3, "user-42")
    assert "max_tokens" not in member and "stop" not in member
    assert (judge["max_tokens"], judge["stop"]) == (77, ["\n\n"])
    assert member["logit_bias"] == judge["logit_bias"] == {"50256": -100}
    assert member["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "Be brief." in judge["messages"][0]["content"]


def test_detail_none_drops_member_text(client: OpenAI, fake: FakeUpstream) -> None:
    """fusion.detail = "none" keeps member metrics but drops what they wrote."""
    script_trio(fake)
    reply = client.chat.completions.create(
        model="fusion/trio",
        messages=USER,
        extra_body={"fusion": {"detail": "none"}},  # type: ignore[arg-type]
    )
    members = (reply.model_extra or {})["fusion"]["members"]
    assert all(m["content"] is None for m in members)
    assert all(m["tokens_out"] > 0 for m in members)


def test_ad_hoc_panel_through_fusion_object(client: OpenAI, fake: FakeUpstream) -> None:
    """fusion.models + judge_model make an ad-hoc panel from the configured provider's models."""
    fake.script("adhoc/judge", Reply(text="ad hoc verdict"))
    reply = client.chat.completions.create(
        model="fusion/custom",
        messages=USER,  # type: ignore[arg-type]
        extra_body={"fusion": {"models": ["adhoc/one", "adhoc/two"], "judge_model": "adhoc/judge"}},
    )
    assert reply.choices[0].message.content == "ad hoc verdict"
    assert reply.model == "fusion/ad-hoc"
    assert len(fake.requests_for("adhoc/one")) == 1


# --- streaming -------------------------------------------------------------------------------


def test_streaming_with_usage(client: OpenAI, fake: FakeUpstream) -> None:
    """Chunks share one id, the first carries the role, the finishing one the fusion object,
    and a last usage-only chunk follows when asked."""
    script_trio(fake, Reply(text="Paris is the capital of France.", chunk_size=5, cost=0.01))
    chunks = list(
        client.chat.completions.create(
            model="fusion/trio", messages=USER, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert len({c.id for c in chunks}) == 1
    assert {c.model for c in chunks} == {"fusion/trio"}
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) >= 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Paris is the capital of France."
    )
    finishing = chunks[-2]
    assert finishing.choices[0].finish_reason == "stop"
    assert (finishing.model_extra or {})["fusion"]["judge"]["model"] == JUDGE
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and (last.usage.model_extra or {})["cost"] == pytest.approx(0.016)


def test_stream_without_include_usage_has_no_usage_chunk(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Without stream_options.include_usage no chunk has empty choices (user code indexes [0])."""
    script_trio(fake)
    chunks = list(client.chat.completions.create(model="fusion/trio", messages=USER, stream=True))  # type: ignore[arg-type]
    assert all(c.choices for c in chunks)


def test_judge_tokens_are_relayed_as_they_arrive(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Judge chunks reach the client spread out in time, not buffered to the end."""
    script_trio(fake, Reply(text="one two three four five six", chunk_size=4, chunk_delay_s=0.15))
    arrivals: list[float] = []
    with httpx.Client(base_url=gateway.base_url, timeout=30) as session, session.stream(
        "POST", "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        json={"model": "fusion/trio", "messages": USER, "stream": True},
    ) as reply:  # fmt: skip
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] > 0.4


def test_streaming_keepalive_comments_while_members_work(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """While slow members work, comment lines keep the connection alive (after the hold)."""
    script_trio(fake, gamma=Reply(text="slow", delay_s=1.5))
    with httpx.Client(base_url=gateway.base_url, timeout=30) as session, session.stream(
        "POST", "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        json={"model": "fusion/trio", "messages": USER, "stream": True},
    ) as reply:  # fmt: skip
        lines = list(reply.iter_lines())
    comments = [line for line in lines if line.startswith(":")]
    assert any(line.startswith(": fusion ") for line in comments)
    assert any(line == ": keep-alive" for line in comments)
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"


def test_streamed_tool_call_fragments_never_repeat_id(client: OpenAI, fake: FakeUpstream) -> None:
    """A streamed tool call: id and name only in the first fragment; arguments reassemble."""
    fake.script(ALPHA, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    fake.script(BETA, Reply(text="I would look it up."))
    fake.script(GAMMA, Reply(tool_calls=[FakeToolCall("get_weather", '{"city":"Paris"}')]))
    fake.script(
        JUDGE,
        Reply(
            tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}', id="call_j1")],
            chunk_size=3,
        ),
    )
    chunks = list(
        client.chat.completions.create(
            model="fusion/trio",
            messages=USER,
            tools=[WEATHER_TOOL],
            stream=True,  # type: ignore[arg-type, list-item]
        )
    )
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(fragments) > 2
    assert [f.id for f in fragments if f.id] == ["call_j1"]
    assert [f.function.name for f in fragments if f.function and f.function.name] == ["get_weather"]
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- tools -----------------------------------------------------------------------------------


def test_tool_call_round_trip(client: OpenAI, fake: FakeUpstream) -> None:
    """tool call -> tool result -> final answer, through the fused model."""
    proposal = Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')])
    for member in (ALPHA, BETA, GAMMA):
        fake.script(member, proposal, Reply(text="It is 21 °C and sunny in Paris."))
    fake.script(
        JUDGE,
        Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}', id="call_w")]),
        Reply(text="It's 21 °C and sunny in Paris."),
    )
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.chat.completions.create(
        model="fusion/trio", messages=question, tools=[WEATHER_TOOL]
    )  # type: ignore[arg-type, list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    follow_up = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'},
    ]
    second = client.chat.completions.create(
        model="fusion/trio", messages=follow_up, tools=[WEATHER_TOOL]
    )  # type: ignore[arg-type, list-item]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It's 21 °C and sunny in Paris."
    judge_messages = fake.requests_for(JUDGE)[1].body["messages"]
    assert {
        "role": "tool",
        "tool_call_id": "call_w",
        "content": '{"temp_c": 21, "sky": "sunny"}',
    } in judge_messages
    assert fake.requests_for(JUDGE)[0].body["tools"] == [WEATHER_TOOL]


# --- passthrough -----------------------------------------------------------------------------


def test_passthrough_non_streaming(client: OpenAI, fake: FakeUpstream) -> None:
    """A non-fusion model is relayed to the provider and its body comes back as sent."""
    fake.script("vendor/model", Reply(text="direct answer", reasoning="thinking"))
    reply = client.chat.completions.create(model="vendor/model", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "direct answer"
    assert reply.id.startswith("gen-")  # the provider's own id
    assert (reply.choices[0].message.model_extra or {})["reasoning"] == "thinking"
    assert (
        fake.requests_for("vendor/model")[0].headers["authorization"]
        == "Bearer provider-secret-key"
    )


def test_passthrough_streaming_drops_usage_chunk_unless_asked(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Stream chunks are relayed; the provider's usage-only chunk only with include_usage."""
    fake.script("vendor/model", Reply(text="streamed directly", chunk_size=4))
    plain = list(client.chat.completions.create(model="vendor/model", messages=USER, stream=True))  # type: ignore[arg-type]
    assert all(chunk.choices for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == "streamed directly"
    with_usage = list(
        client.chat.completions.create(
            model="vendor/model", messages=USER, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None


def test_passthrough_error_is_normalised(client: OpenAI, fake: FakeUpstream) -> None:
    """A provider's OpenRouter-shaped 400 reaches the client as an OpenAI-shaped 400."""
    fake.script("vendor/model", Reply(status=400, error_message="context length exceeded"))
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="vendor/model", messages=USER)  # type: ignore[arg-type]
    body = raised.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert "context length exceeded" in body["message"]


# --- auth and request validation -------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic a2V5LW9uZQ==", "Bearer"])
def test_missing_or_wrong_key_is_401(
    gateway: GatewayProcess, fake: FakeUpstream, header: str | None
) -> None:
    """No key, a wrong key or another scheme: 401 in OpenAI's shape, nothing spent."""
    headers = {"Authorization": header} if header else {}
    reply = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", headers=headers,
        json={"model": "fusion/trio", "messages": USER},
    )  # fmt: skip
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert error["type"] == "authentication_error"
    assert "wrong-key" not in reply.text
    assert fake.received == []


def test_every_configured_key_is_accepted(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """Both keys of FUSION_SERVER_API_KEYS work (rotation)."""
    script_trio(fake)
    for key in KEYS:
        client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(model="fusion/trio", messages=USER).choices  # type: ignore[arg-type]


def test_fuse_route_needs_a_key(gateway: GatewayProcess) -> None:
    """/fuse spends money, so it needs a key too."""
    reply = httpx.post(f"{gateway.base_url}/fuse", json={"prompt": "x", "panel": "trio"})
    assert reply.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": "fusion/trio"}', 400, "messages"),
        (b'{"model": "fusion/trio", "messages": []}', 400, "messages"),
        (b'{"model": "fusion/trio", "messages": "hi"}', 400, "messages"),
        (b'{"model": "fusion/trio", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages[0].role"),
        (b'{"model": "fusion/trio", "messages": [{"role": "tool", "content": "x"}]}', 400, "messages[0].tool_call_id"),
        (b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature"),
        (b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n"),
        (b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}', 400, "stream_options"),
        (b'{"model": "fusion/nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}], "fusion": {"judge_template": "nope"}}', 404, "judge_template"),
        (b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}], "fusion": {"colour": 1}}', 400, "fusion.colour"),
    ],
)  # fmt: skip
def test_invalid_requests_get_precise_errors(
    http: httpx.Client, fake: FakeUpstream, body: bytes, status: int, param: str | None
) -> None:
    """Each invalid request gets its status and an OpenAI-shaped error naming the field."""
    reply = http.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fake.received == []


def test_limits_give_413(http: httpx.Client, fake: FakeUpstream) -> None:
    """Over max_body_bytes, max_messages or max_tools: 413."""
    too_big = {"model": "fusion/trio", "messages": [{"role": "user", "content": "x" * 70000}]}
    assert http.post("/v1/chat/completions", json=too_big).status_code == 413
    many = {"model": "fusion/trio", "messages": [{"role": "user", "content": "x"}] * 21}
    reply = http.post("/v1/chat/completions", json=many)
    assert reply.status_code == 413 and reply.json()["error"]["param"] == "messages"
    tools = {"model": "fusion/trio", "messages": USER, "tools": [WEATHER_TOOL] * 5}
    reply = http.post("/v1/chat/completions", json=tools)
    assert reply.status_code == 413 and reply.json()["error"]["param"] == "tools"
    assert fake.received == []


def test_unknown_route_and_method(http: httpx.Client) -> None:
    """Unknown routes and methods answer in OpenAI's error shape too."""
    assert http.get("/v2/nothing").json()["error"]["code"] == "not_found"
    reply = http.get("/v1/chat/completions")
    assert reply.status_code == 405
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_request_id_is_kept_or_replaced(http: httpx.Client) -> None:
    """A sane X-Request-Id comes back as sent; an unsafe one is replaced."""
    assert (
        http.get("/health", headers={"X-Request-Id": "abc-123.x_y"}).headers["x-request-id"]
        == "abc-123.x_y"
    )
    replaced = http.get("/health", headers={"X-Request-Id": "bad id\twith spaces"}).headers[
        "x-request-id"
    ]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32
    assert http.get("/nope").headers["x-request-id"]


# --- degradation -----------------------------------------------------------------------------


def test_member_failure_is_reported_not_fatal(client: OpenAI, fake: FakeUpstream) -> None:
    """A member answering 500 (after retries) is in fusion.members[].error; the reply is 200."""
    script_trio(fake, beta=Reply(status=503, error_message="overloaded"))
    reply = client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    members = (reply.model_extra or {})["fusion"]["members"]
    assert members[1]["error"] is not None and "overloaded" in members[1]["error"]
    assert members[1]["attempts"] == 3
    assert reply.choices[0].message.content == "Paris is the capital of France."


def test_all_members_failing_is_502(client: OpenAI, fake: FakeUpstream) -> None:
    """Every member failed (not all by timeout): 502 with an OpenAI-shaped body."""
    for member in (ALPHA, BETA, GAMMA):
        fake.script(member, Reply(status=401, error_message="bad provider key"))
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert raised.value.status_code == 502
    assert "provider-secret-key" not in str(raised.value.body)


def test_all_members_timing_out_is_504(client: OpenAI, fake: FakeUpstream) -> None:
    """Every member out of time: 504."""
    fake.script("e2e/fast-one", Reply(hang=True))
    fake.script("e2e/fast-two", Reply(hang=True))
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="fusion/quick", messages=USER)  # type: ignore[arg-type]
    assert raised.value.status_code == 504


def test_streamed_fast_failure_is_a_real_status(http: httpx.Client, fake: FakeUpstream) -> None:
    """A streamed fusion that fails within the hold interval gets a 502 JSON, not an SSE body."""
    for member in (ALPHA, BETA, GAMMA):
        fake.script(member, Reply(status=401))
    reply = http.post(
        "/v1/chat/completions", json={"model": "fusion/trio", "messages": USER, "stream": True}
    )
    assert reply.status_code == 502
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["code"] == "panel_failed"


def test_judge_failure_falls_back_to_backup_judge(client: OpenAI, fake: FakeUpstream) -> None:
    """The judge failing hands over to the fallback judge."""
    script_trio(fake, Reply(status=400))
    fake.script(BACKUP, Reply(text="backup verdict"))
    reply = client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "backup verdict"
    assert (reply.model_extra or {})["fusion"]["judge"]["model"] == BACKUP


def test_all_judges_failing_degrades_with_header(http: httpx.Client, fake: FakeUpstream) -> None:
    """No judge answers: a member answer stands in, marked by header and fusion.degraded."""
    script_trio(fake, Reply(status=400))
    fake.script(BACKUP, Reply(status=400))
    reply = http.post("/v1/chat/completions", json={"model": "fusion/trio", "messages": USER})
    assert reply.status_code == 200
    assert reply.headers["x-fusion-degraded"] == "judge_failed"
    body = reply.json()
    assert body["fusion"]["degraded"] == "judge_failed"
    assert body["choices"][0]["message"]["content"] in {
        "Paris.",
        "The capital of France is Paris.",
        "It is Paris.",
    }


def test_streamed_judge_failure_degrades_in_the_last_chunk(
    client: OpenAI, fake: FakeUpstream
) -> None:
    """Streaming, judges failing before their first token: a member answer is streamed and
    the finishing chunk says degraded."""
    script_trio(fake, Reply(status=400))
    fake.script(BACKUP, Reply(status=400))
    chunks = list(client.chat.completions.create(model="fusion/trio", messages=USER, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in {"Paris.", "The capital of France is Paris.", "It is Paris."}
    assert (chunks[-1].model_extra or {})["fusion"]["degraded"] == "judge_failed"


def test_judge_failing_mid_stream_is_an_in_band_error(client: OpenAI, fake: FakeUpstream) -> None:
    """After judge tokens went out, a failure arrives as an error event, never a silent cut."""
    script_trio(
        fake, Reply(text="this verdict will break off", chunk_size=4, stream_error_after_chunks=2)
    )
    stream = client.chat.completions.create(model="fusion/trio", messages=USER, stream=True)  # type: ignore[arg-type]
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError) as raised:
        read_all()
    assert received
    assert "judge" in str(raised.value.message)


# --- client disconnects ----------------------------------------------------------------------

PATIENT_MEMBERS = ["e2e/patient-a", "e2e/patient-b"]  # the "patient" panel, judge aside


def hang_patient_members(fake: FakeUpstream) -> list[str]:
    """Make the patient panel's members hang (their own budget is 60 s); their slugs."""
    for member in PATIENT_MEMBERS:
        fake.script(member, Reply(hang=True))
    return PATIENT_MEMBERS


def leave_stream_at(gateway: GatewayProcess, model: str, leave: Callable[[str], bool]) -> None:
    """Stream a chat request to ``model`` and disconnect at the first line ``leave`` accepts."""
    with httpx.Client(base_url=gateway.base_url, timeout=30) as session, session.stream(
        "POST", "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[0]}"},
        json={"model": model, "messages": USER, "stream": True},
    ) as reply:  # fmt: skip
        for line in reply.iter_lines():
            if leave(line):
                break


def test_disconnect_cancels_member_calls(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """A non-streaming client that gives up makes the gateway cancel every upstream call
    (the members' own budget is 60 s, so only the disconnect can end them this early)."""
    members = hang_patient_members(fake)
    impatient = OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=KEYS[0], max_retries=0, timeout=1.0
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="fusion/patient", messages=USER)  # type: ignore[arg-type]
    assert wait_until(lambda: sorted(fake.cancelled) == members, timeout_s=10)
    assert fake.requests_for("e2e/patient-judge") == []


def test_disconnect_while_status_is_held_cancels_members(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving before the first byte still cancels every member call."""
    members = hang_patient_members(fake)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions", timeout=0.3,
            headers={"Authorization": f"Bearer {KEYS[0]}"},
            json={"model": "fusion/patient", "messages": USER, "stream": True},
        )  # fmt: skip
    assert wait_until(lambda: sorted(fake.cancelled) == members, timeout_s=10)


def test_disconnect_after_keepalives_cancels_members(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving while members still work (stream already open) cancels them."""
    members = hang_patient_members(fake)
    leave_stream_at(gateway, "fusion/patient", lambda line: line == ": keep-alive")
    assert wait_until(lambda: sorted(fake.cancelled) == members, timeout_s=10)


def test_disconnect_during_judge_stream_cancels_the_judge(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """A streaming client leaving mid-answer makes the gateway drop the judge's stream."""
    script_trio(fake, Reply(text="a long verdict " * 20, chunk_size=4, chunk_delay_s=0.1))
    leave_stream_at(
        gateway, "fusion/trio", lambda line: line.startswith("data: {") and '"content"' in line
    )
    assert wait_until(lambda: JUDGE in fake.cancelled)


# --- /fuse -----------------------------------------------------------------------------------


def test_fuse_returns_the_whole_result(http: httpx.Client, fake: FakeUpstream) -> None:
    """POST /fuse answers with the FusionResult as JSON."""
    script_trio(fake)
    result = http.post("/fuse", json={"prompt": "Capital of France?", "panel": "trio"}).json()
    assert result["answer"] == "Paris is the capital of France."
    assert [r["model"] for r in result["panel_responses"]] == [ALPHA, BETA, GAMMA]
    assert result["total_cost"] == pytest.approx(0.016)


def test_fuse_stream_sends_progress_events(http: httpx.Client, fake: FakeUpstream) -> None:
    """With stream, /fuse sends member events, judge deltas and the result."""
    script_trio(fake, Reply(text="streamed verdict here", chunk_size=5))
    with http.stream(
        "POST", "/fuse", json={"prompt": "q", "panel": "trio", "stream": True}
    ) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith("event: ")]
    events = [line.removeprefix("event: ") for line in lines]
    assert events.count("member") == 3
    assert events.count("judge") >= 2
    assert events[-1] == "result"


def test_fuse_validation(http: httpx.Client) -> None:
    """/fuse needs exactly one of prompt/messages and one of panel/models."""
    assert http.post("/fuse", json={"panel": "trio"}).json()["error"]["param"] == "prompt"
    assert http.post("/fuse", json={"prompt": "x"}).json()["error"]["param"] == "panel"
