"""Findings of the review of ``/v1/responses`` and ``/v1/messages``, each pinned by a test
against a real ``fusion serve`` on the fake upstream, driven by the official clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import ToolParam
from openai import OpenAI
from openai.types.responses import ResponseFunctionToolCall

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
