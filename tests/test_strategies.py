"""Panel strategies: early quorum, cascade, tool quorum, and the panel's own cost ceiling."""

from __future__ import annotations

import asyncio

import pytest

from fusion_engine.engine import FusionEngine
from fusion_engine.errors import CostLimitError
from fusion_engine.panels import EstimatedCost
from fusion_engine.protocol import GenerationParams
from fusion_engine.server.gateway import Gateway
from fusion_engine.settings import Settings
from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import eventually, make_engine, panel

A, B, C, JUDGE = "acme/a", "acme/b", "acme/c", "judge/model"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


async def test_early_quorum_stops_waiting_once_enough_agree(fake: FakeUpstream) -> None:
    """With early_quorum, two agreeing answers end the wait; the hanging member is cancelled."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="The answer is 42."))
    fake.script(C, Reply(hang=True))
    chosen = panel(A, B, C, early_quorum=True, min_responses=2)
    async with make_engine(fake) as engine:
        result = await asyncio.wait_for(engine.fuse("q", panel=chosen), 10)
    assert result.panel_responses[2].error_kind == "deadline"
    assert len(fake.requests_for(JUDGE)) == 1
    await eventually(lambda: C in fake.cancelled)


async def test_early_quorum_waits_while_answers_disagree(fake: FakeUpstream) -> None:
    """Two disagreeing answers are not a quorum: the third member is awaited."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="#### 7"))
    fake.script(C, Reply(text="#### 42", delay_s=0.3))
    chosen = panel(A, B, C, early_quorum=True, min_responses=2)
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=chosen)
    assert [r.ok for r in result.panel_responses] == [True, True, True]


async def test_cascade_settles_on_its_first_members(fake: FakeUpstream) -> None:
    """The first two members agree: the rest are never asked and no judge is paid."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="42"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, C, strategy="cascade"))
    assert result.judge_skipped == "cascade"
    assert fake.requests_for(C) == [] and fake.requests_for(JUDGE) == []
    assert [r.model for r in result.panel_responses] == [A, B]
    assert result.answer == "#### 42"


async def test_cascade_escalates_when_the_first_members_disagree(fake: FakeUpstream) -> None:
    """Disagreement in the first stage asks the rest of the panel and the judge."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="#### 7"))
    fake.script(C, Reply(text="#### 42"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, C, strategy="cascade"))
    assert result.judge_skipped is None
    assert [r.model for r in result.panel_responses] == [A, B, C]
    assert len(fake.requests_for(JUDGE)) == 1


async def test_tool_quorum_replaces_a_call_too_few_proposed(fake: FakeUpstream) -> None:
    """The judge's call must have tool_quorum votes; else the most-voted qualified call stands."""
    paris, rome = '{"city": "Paris"}', '{"city": "Rome"}'
    fake.script(A, Reply(tool_calls=[FakeToolCall("get_weather", paris)]))
    fake.script(B, Reply(tool_calls=[FakeToolCall("get_weather", '{"city":"Paris"}')]))
    fake.script(C, Reply(tool_calls=[FakeToolCall("get_weather", rome)]))
    fake.script(JUDGE, Reply(tool_calls=[FakeToolCall("get_weather", rome)]))
    params = GenerationParams(tools=[WEATHER])
    async with make_engine(fake) as engine:
        result = await engine.fuse("w?", panel=panel(A, B, C, tool_quorum=2), params=params)
    assert result.tool_calls is not None
    assert result.tool_calls[0].function.arguments == paris
    assert [(v.votes, v.members) for v in result.tool_votes] == [(2, [0, 1]), (1, [2])]


async def test_no_call_reaching_the_tool_quorum_means_a_text_answer(fake: FakeUpstream) -> None:
    """Without a qualified call the judge is told to answer in words (tool_choice none)."""
    fake.script(A, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    fake.script(B, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Rome"}')]))
    fake.script(JUDGE, Reply(text="Which city do you mean, Paris or Rome?"))
    params = GenerationParams(tools=[WEATHER], tool_choice="auto")
    async with make_engine(fake) as engine:
        result = await engine.fuse("w?", panel=panel(A, B, tool_quorum=2), params=params)
    assert result.tool_calls is None
    assert result.answer == "Which city do you mean, Paris or Rome?"
    assert fake.requests_for(JUDGE)[0].body["tool_choice"] == "none"


def test_panel_cost_ceiling_applies_below_the_gateways() -> None:
    """A panel's max_cost_usd refuses what its estimate exceeds, even with no gateway ceiling."""
    engine = FusionEngine(
        settings=Settings.from_environ({"OPENROUTER_API_KEY": "k"}), panels={},
        judge_templates={"default": "x"},
    )  # fmt: skip
    gateway = Gateway(engine.settings, engine)
    costly = panel(A, B, max_cost_usd=0.1, estimated_cost_per_query=EstimatedCost(min=0.2, max=0.4))
    with pytest.raises(CostLimitError):
        gateway.within_budget(engine.plan("q", panel=costly))
    cheap = panel(A, B, max_cost_usd=1.0, estimated_cost_per_query=EstimatedCost(min=0.2, max=0.4))
    assert gateway.within_budget(engine.plan("q", panel=cheap)).panel.models == cheap.models


async def test_provider_concurrency_queues_calls_and_reports_the_wait(fake: FakeUpstream) -> None:
    """A provider limited to one call at a time serves members one by one; the wait is queue_ms."""
    from fusion_engine.config import GatewayConfig, ProviderSpec, resolve_config
    from fusion_engine.panels import PanelMember

    config = resolve_config(
        GatewayConfig(
            providers={
                "openrouter": ProviderSpec(
                    kind="openrouter", base_url=fake.base_url, api_key_env=None
                ),
                "gpu": ProviderSpec(
                    kind="openai", base_url=fake.base_url, model_concurrency={"m/one": 1}
                ),
            }
        ),
        {},
    )
    for member in ("m/one", "m/two"):
        fake.script(member, Reply(text="ok", delay_s=0.3))
    members = [PanelMember(slug="m/one", provider="gpu"), PanelMember(slug="m/one", provider="gpu"),
               PanelMember(slug="m/two", provider="gpu")]  # fmt: skip
    engine = FusionEngine(
        settings=Settings.from_environ({}),
        config=config,
        panels={},
        judge_templates={"default": "x"},
    )
    async with engine:
        result = await engine.fuse("q", panel=panel(*members))
    one_a, one_b, two = result.panel_responses
    arrivals = sorted(r.received_at for r in fake.requests_for("m/one"))
    assert arrivals[1] - arrivals[0] >= 0.25  # the second m/one call waited for the first
    assert max(one_a.queue_ms, one_b.queue_ms) >= 250
    assert two.queue_ms < 50  # another model on the same provider is not held back
