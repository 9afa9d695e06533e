"""tool_quorum holds on every path to the answer: when the judge fails and a member's answer
stands in, and when the judge is skipped (issue 15, item 4)."""

from __future__ import annotations

import pytest

from fusion_engine.errors import JudgeFailedError
from fusion_engine.protocol import GenerationParams
from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import make_engine, panel

A, B, C, JUDGE = "acme/a", "acme/b", "acme/c", "judge/model"
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("delete_repo", "get_weather")
]
DELETE = FakeToolCall("delete_repo", '{"repo": "prod"}')
WEATHER = FakeToolCall("get_weather", '{"city": "Paris"}')


def called(result_calls: object) -> list[str]:
    return [call.function.name for call in result_calls or []]  # type: ignore[attr-defined]


async def test_judge_failure_never_lets_a_call_below_the_quorum_through(
    fake: FakeUpstream,
) -> None:
    """Judge fails, each member proposes a different call (one vote each, quorum 2): the
    stand-in must not carry delete_repo; with no words to stand in, the fusion fails."""
    fake.script(A, Reply(tool_calls=[DELETE]))
    fake.script(B, Reply(tool_calls=[WEATHER]))
    fake.script(JUDGE, Reply(status=400, error_message="judge broke"))
    params = GenerationParams(tools=TOOLS)
    async with make_engine(fake) as engine:
        with pytest.raises(JudgeFailedError, match="tool quorum"):
            await engine.fuse("clean up", panel=panel(A, B, tool_quorum=2), params=params)
    assert fake.requests_for(JUDGE)[0].body["tool_choice"] == "none"


async def test_stand_in_keeps_its_words_but_drops_a_call_below_the_quorum(
    fake: FakeUpstream,
) -> None:
    """Judge fails; the stand-in's text survives, its unqualified tool call does not."""
    fake.script(A, Reply(text="Deleting the prod repo now.", tool_calls=[DELETE]))
    fake.script(B, Reply(text="Let me check the weather.", tool_calls=[WEATHER]))
    fake.script(JUDGE, Reply(status=400))
    params = GenerationParams(tools=TOOLS)
    async with make_engine(fake) as engine:
        result = await engine.fuse("clean up", panel=panel(A, B, tool_quorum=2), params=params)
    assert result.degraded == "judge_failed"
    assert result.tool_calls is None and result.finish_reason == "stop"
    assert result.answer in {"Deleting the prod repo now.", "Let me check the weather."}


async def test_stand_in_takes_the_qualified_call(fake: FakeUpstream) -> None:
    """Judge fails; the qualified call (two votes) stands in, never the lone delete_repo."""
    fake.script(A, Reply(tool_calls=[DELETE]))
    fake.script(B, Reply(tool_calls=[WEATHER]))
    fake.script(C, Reply(tool_calls=[WEATHER]))
    fake.script(JUDGE, Reply(status=400))
    params = GenerationParams(tools=TOOLS)
    async with make_engine(fake) as engine:
        result = await engine.fuse("go", panel=panel(A, B, C, tool_quorum=2), params=params)
    assert result.degraded == "judge_failed"
    assert called(result.tool_calls) == ["get_weather"]


async def test_skipped_judge_does_not_skip_the_quorum(fake: FakeUpstream) -> None:
    """skip_judge_if_single with one answer proposing delete_repo (one vote, quorum 2): the
    judge is asked after all, in words, and no tool call is returned."""
    fake.script(A, Reply(tool_calls=[DELETE]))
    fake.script(B, Reply(status=403))
    fake.script(JUDGE, Reply(text="Which repository do you mean?"))
    chosen = panel(A, B, tool_quorum=2, skip_judge_if_single=True)
    async with make_engine(fake) as engine:
        result = await engine.fuse("clean up", panel=chosen, params=GenerationParams(tools=TOOLS))
    assert result.tool_calls is None
    assert result.answer == "Which repository do you mean?"
    assert fake.requests_for(JUDGE)[0].body["tool_choice"] == "none"


async def test_streamed_judge_never_relays_a_call_below_the_quorum(fake: FakeUpstream) -> None:
    """Streaming (as the SSE routes do), the judge's delete_repo (one vote of two needed) never
    reaches the listener: with a tool quorum the verdict is checked before anything is relayed."""
    from fusion_engine.results import JudgeDelta

    fake.script(A, Reply(tool_calls=[DELETE]))
    fake.script(B, Reply(tool_calls=[WEATHER]))
    fake.script(C, Reply(tool_calls=[WEATHER]))
    fake.script(JUDGE, Reply(tool_calls=[DELETE]))
    events: list[object] = []
    async with make_engine(fake) as engine:
        plan = engine.plan(
            "go", panel=panel(A, B, C, tool_quorum=2), params=GenerationParams(tools=TOOLS)
        )
        result = await engine.run(plan, listener=events.append, stream_judge=True)
    relayed = [
        fragment.function.name
        for event in events
        if isinstance(event, JudgeDelta)
        for choice in event.chunk.choices
        for fragment in choice.delta.tool_calls or ()
        if fragment.function is not None
    ]
    assert "delete_repo" not in relayed
    assert called(result.tool_calls) == ["get_weather"]
