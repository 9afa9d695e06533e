"""Server pieces that need no running server: auth, chunk writing, passthrough switch, binding."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fusion_engine.config import GatewayConfig, PassthroughSpec, RateLimitSpec, resolve_config
from fusion_engine.engine import FusionEngine
from fusion_engine.errors import AuthenticationError, ConfigError, NotFoundError
from fusion_engine.keys import key_ring
from fusion_engine.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
)
from fusion_engine.results import FusionResult, JudgeDelta
from fusion_engine.server.auth import check_bearer
from fusion_engine.server.gateway import Gateway
from fusion_engine.server.passthrough import passthrough_provider
from fusion_engine.server.request_id import request_id
from fusion_engine.server.runs import FusionRun, RunItem
from fusion_engine.server.serving import check_auth_binding, is_loopback
from fusion_engine.server.streaming import AnswerFeed, ChatRenderer
from fusion_engine.settings import ApiKey, Secret, Settings

from .helpers import E2E_FILES, FakeInThread, gateway_env, make_engine

KEYS = key_ring(
    (ApiKey("first", Secret("first-key")), ApiKey("second", Secret("second-key"))),
    (),
    RateLimitSpec(),
)


def test_no_keys_means_open() -> None:
    """Without configured keys every request passes (the bind check guards exposure)."""
    assert check_bearer(None, key_ring((), (), RateLimitSpec())) == "anonymous"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer nope", "Token first-key", "first-key"]
)
def test_bad_or_missing_key_is_refused_without_echo(header: str | None) -> None:
    """Anything but 'Bearer <configured key>' is refused, and the message never repeats it."""
    with pytest.raises(AuthenticationError) as raised:
        check_bearer(header, KEYS)
    assert "nope" not in raised.value.message
    assert raised.value.status_code == 401


def test_any_configured_key_is_accepted() -> None:
    """Every configured key works, whatever its position; the scheme is case-insensitive."""
    assert check_bearer("Bearer first-key", KEYS) == "first"
    assert check_bearer("bearer second-key", KEYS) == "second"


def test_tool_call_fragments_carry_id_and_name_once() -> None:
    """Even when the upstream repeats id and name, our fragments carry them only once."""
    feed = AnswerFeed(
        ChatRenderer(completion_id="chatcmpl-1", created=1, model="fusion/p", include_usage=False)
    )

    def fragment(arguments: str) -> ChatCompletionChunk:
        call = ToolCallDelta(
            index=0, id="call_9", type="function",
            function=FunctionCallDelta(name="lookup", arguments=arguments),
        )  # fmt: skip
        return ChatCompletionChunk(choices=[ChunkChoice(delta=Delta(tool_calls=[call]))])

    out = [
        msgspec.json.decode(feed.chunk(fragment(part), final_parts=False).removeprefix(b"data: "))
        for part in ('{"q":', '"x"}')
    ]
    first, second = (chunk["choices"][0]["delta"]["tool_calls"] for chunk in out)
    assert (first[0]["id"], first[0]["function"]["name"]) == ("call_9", "lookup")
    assert "id" not in second[0] and "name" not in second[0]["function"]
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in out[1]["choices"][0]["delta"]
    assert {chunk["id"] for chunk in out} == {"chatcmpl-1"}
    whole = feed.answer().tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in whole] == [
        ("call_9", "lookup", '{"q":"x"}')
    ]


def test_passthrough_can_be_switched_off() -> None:
    """With passthrough disabled, a non-fusion model is a 404 naming the model."""
    config = resolve_config(GatewayConfig(passthrough=PassthroughSpec(enabled=False)), {})
    engine = FusionEngine(
        settings=Settings.from_environ({}),
        config=config,
        panels={},
        judge_templates={"default": "x"},
    )
    with pytest.raises(NotFoundError) as raised:
        passthrough_provider(Gateway(engine.settings, engine), "vendor/model")
    assert raised.value.param == "model"
    assert "vendor/model" in raised.value.message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses count as private to this machine."""
    assert is_loopback(host) is loopback


def test_open_gateway_refuses_public_bind() -> None:
    """No keys on a public address is refused unless explicitly allowed."""
    with pytest.raises(ConfigError, match="FUSION_SERVER_API_KEYS"):
        check_auth_binding(Settings.from_environ({"FUSION_HOST": "0.0.0.0"}))
    check_auth_binding(
        Settings.from_environ({"FUSION_HOST": "0.0.0.0", "FUSION_ALLOW_NO_AUTH": "1"})
    )
    check_auth_binding(
        Settings.from_environ({"FUSION_HOST": "0.0.0.0", "FUSION_SERVER_API_KEY": "k"})
    )


def test_request_id_is_chosen_once_per_request() -> None:
    """A sane client id is kept; an unsafe one is replaced; either way it is stable."""
    scope: dict[str, object] = {"headers": [(b"x-request-id", b"client-id_1.2")]}
    assert request_id(scope) == "client-id_1.2"
    unsafe: dict[str, object] = {"headers": [(b"x-request-id", b"x" * 129)]}
    chosen = request_id(unsafe)
    assert chosen != "x" * 129
    assert request_id(unsafe) == chosen


def test_skipped_judge_and_agreement_on_the_wire() -> None:
    """A consensus short-cut shows as fusion.judge = {"skipped": "consensus"} with the agreement."""
    import msgspec

    from fusion_engine.agreement import Agreement
    from fusion_engine.results import FusionResult, PanelResponse
    from fusion_engine.server.schema import fusion_detail

    result = FusionResult(
        answer="42",
        panel_responses=[PanelResponse(index=0, model="m", content="42")],
        judge_skipped="consensus",
        agreement=Agreement(score=1.0, method="answer", majority=[0], outliers=[]),
    )
    wire = msgspec.json.decode(msgspec.json.encode(fusion_detail(result, "full")))
    assert wire["judge"] == {"skipped": "consensus"}
    assert wire["agreement"] == {"score": 1.0, "method": "answer", "majority": [0], "outliers": []}


class _BurstEngine:
    """Stands in for the engine: reports ``items`` all at once, then returns ``result``."""

    def __init__(self, items: list[RunItem], result: FusionResult) -> None:
        self._items, self._result = items, result

    async def run(self, plan: object, *, listener: Any, stream_judge: bool) -> FusionResult:
        for item in self._items:
            listener(item)
        return self._result


async def test_a_burst_of_judge_chunks_goes_out_in_one_write() -> None:
    """Judge chunks and the end, all queued at once: one write for the client holding every
    event in order, and the result recorded for the request's log."""

    from fusion_engine.server.observe import RequestFacts
    from fusion_engine.server.streaming import KEEPALIVE, _events

    def delta(text: str) -> JudgeDelta:
        return JudgeDelta(chunk=msgspec.json.decode(
            msgspec.json.encode({"choices": [{"index": 0, "delta": {"content": text}}]}),
            type=ChatCompletionChunk,
        ))  # fmt: skip

    result = FusionResult(answer="Hello world", total_cost=0.25)
    engine = _BurstEngine([delta("Hello"), delta(" world")], result)
    run = FusionRun(engine, None, stream_judge=True)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the run reports everything before the stream reads
    facts = RequestFacts()
    feed = AnswerFeed(
        ChatRenderer(completion_id="chatcmpl-1", created=1, model="fusion/p", include_usage=False)
    )
    writes = [
        part
        async for part in _events(
            run, [], feed, 1.0, detail="none", facts=facts, outcome="miss", on_answer=None
        )
    ]
    assert len(writes) == 2 and writes[0] == KEEPALIVE  # nothing was held back
    events = [e for e in writes[1].decode().split("\n\n") if e]
    contents = [msgspec.json.decode(e.removeprefix("data: "))["choices"][0]["delta"].get("content")
                for e in events[:2]]  # fmt: skip
    assert contents == ["Hello", " world"]
    assert events[-1] == "data: [DONE]"
    assert facts.cost_usd == 0.25 and facts.cache == "miss"


def test_private_metrics_need_a_key(upstream: FakeInThread, tmp_path: Path) -> None:
    """With metrics_public: false, /metrics answers 401 without the bearer key, 200 with it."""
    from litestar.testing import TestClient

    from fusion_engine.server.app import create_app

    config = tmp_path / "gateway.yaml"
    config.write_text((E2E_FILES / "gateway.yaml").read_text() + "\nmetrics_public: false\n")
    env = gateway_env(upstream.fake, "k-1", config=config, FUSION_RELOAD_INTERVAL_S="0")
    app = create_app(Settings.from_environ(env), engine=make_engine(upstream.fake, env=env))
    with TestClient(app=app) as client:
        refused = client.get("/metrics")
        allowed = client.get("/metrics", headers={"Authorization": "Bearer k-1"})
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert allowed.status_code == 200 and "fusion_requests_total" in allowed.text
