"""FusionEngine against the fake upstream: fan-out, degradation, judge, tools, cancellation."""

from __future__ import annotations

import asyncio
import json

import pytest

from fusion_engine import GenerationParams, PanelMember
from fusion_engine.errors import (
    InvalidRequestError,
    JudgeFailedError,
    PanelFailedError,
    PanelTimeoutError,
    ProviderKeyMissingError,
    UnknownJudgeTemplateError,
    UnknownPanelError,
)
from fusion_engine.results import FusionEvent, JudgeDelta, JudgeStarted, MemberFinished
from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import ManualClock, env_for, eventually, make_engine, panel

A, B, C = "acme/alpha", "acme/beta", "acme/gamma"
JUDGE = "judge/model"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_fans_out_to_every_member_and_judge_fuses(fake: FakeUpstream) -> None:
    """Every member is asked once, the judge sees all answers and its text is the answer."""
    fake.script(A, Reply(text="Paris is the capital."))
    fake.script(B, Reply(text="The capital is Paris."))
    fake.script(C, Reply(text="Paris."))
    fake.script(JUDGE, Reply(text="Paris."))
    async with make_engine(fake) as engine:
        result = await engine.fuse("Capital of France?", panel=panel(A, B, C))
    assert result.answer == "Paris."
    assert [len(fake.requests_for(m)) for m in (A, B, C, JUDGE)] == [1, 1, 1, 1]
    assert [r.model for r in result.panel_responses] == [A, B, C]
    assert all(r.ok for r in result.panel_responses)
    assert result.judge_response is not None and result.judge_response.model == JUDGE
    assert result.degraded is None
    judge_prompt = fake.requests_for(JUDGE)[0].body["messages"][-1]["content"]
    for text in ("Paris is the capital.", "The capital is Paris.", "Paris."):
        assert text in judge_prompt


async def test_members_run_concurrently(fake: FakeUpstream) -> None:
    """Three members that each take 0.3 s are all in flight at once."""
    for model in (A, B, C):
        fake.script(model, Reply(text="ok", delay_s=0.3))
    async with make_engine(fake) as engine:
        await engine.fuse("hi", panel=panel(A, B, C))
    arrivals = [fake.requests_for(m)[0].received_at for m in (A, B, C)]
    assert max(arrivals) - min(arrivals) < 0.2


async def test_judge_sees_answers_anonymised_in_panel_order(fake: FakeUpstream) -> None:
    """Model names never reach the judge; answers are numbered in panel order."""
    fake.script(A, Reply(text="first answer"))
    fake.script(B, Reply(text="second answer"))
    async with make_engine(fake) as engine:
        await engine.fuse("q", panel=panel(A, B))
    judge_messages = fake.requests_for(JUDGE)[0].body["messages"]
    text = json.dumps(judge_messages)
    assert A not in text and B not in text
    closing = judge_messages[-1]["content"]
    assert closing.index("### Answer 1") < closing.index("first answer")
    assert closing.index("### Answer 2") < closing.index("second answer")
    assert judge_messages[0]["role"] == "system"


async def test_usage_and_cost_totals_cover_members_and_judge(fake: FakeUpstream) -> None:
    """Tokens and cost sum every call; latency is reported per call."""
    fake.script(A, Reply(text="a", prompt_tokens=10, completion_tokens=5, cost=0.001))
    fake.script(B, Reply(text="b", prompt_tokens=20, completion_tokens=7, cost=0.002))
    fake.script(JUDGE, Reply(text="j", prompt_tokens=100, completion_tokens=9, cost=0.01))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B))
    assert result.tokens_in == 130
    assert result.tokens_out == 21
    assert result.total_cost == pytest.approx(0.013)
    assert result.panel_responses[0].cost_usd == pytest.approx(0.001)
    assert all(r.latency_ms > 0 for r in result.panel_responses)


async def test_unknown_cost_makes_total_unknown(fake: FakeUpstream) -> None:
    """A call without a reported cost makes total_cost None instead of a made-up number."""
    fake.script(A, Reply(text="a", include_cost=False))
    fake.script(B, Reply(text="b"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B))
    assert result.panel_responses[0].cost_usd is None
    assert result.total_cost is None


async def test_partial_failure_is_reported_and_judge_sees_the_rest(fake: FakeUpstream) -> None:
    """A failing member is in members[].error; the judge gets the others' answers only."""
    fake.script(A, Reply(text="good answer"))
    fake.script(B, Reply(status=400, error_message="context length exceeded"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B))
    failed = result.panel_responses[1]
    assert not failed.ok
    assert failed.error is not None and "context length exceeded" in failed.error
    assert failed.error_kind == "http_error"
    assert [r.model for r in result.successful_panel] == [A]
    closing = fake.requests_for(JUDGE)[0].body["messages"][-1]["content"]
    assert "### Answer 2" not in closing
    assert "good answer" in closing


async def test_every_member_failing_raises_502(fake: FakeUpstream) -> None:
    """No member answered and not all timed out: PanelFailedError (502) with every reason."""
    fake.script(A, Reply(status=401, error_message="bad key"))
    fake.script(B, Reply(status=400, error_message="bad request"))
    async with make_engine(fake) as engine:
        with pytest.raises(PanelFailedError) as raised:
            await engine.fuse("q", panel=panel(A, B))
    assert raised.value.status_code == 502
    assert not isinstance(raised.value, PanelTimeoutError)
    assert len(raised.value.responses) == 2
    assert fake.requests_for(JUDGE) == []


async def test_every_member_timing_out_raises_504(fake: FakeUpstream) -> None:
    """Every member out of time: PanelTimeoutError (504), and the fake saw the calls abandoned."""
    fake.script(A, Reply(hang=True))
    fake.script(B, Reply(hang=True))
    async with make_engine(fake) as engine:
        with pytest.raises(PanelTimeoutError) as raised:
            await engine.fuse("q", panel=panel(A, B, member_timeout_s=0.2))
    assert raised.value.status_code == 504
    assert {r.error_kind for r in raised.value.responses} == {"timeout"}
    await eventually(lambda: sorted(fake.cancelled) == sorted([A, B]))


async def test_empty_member_answer_counts_as_failure(fake: FakeUpstream) -> None:
    """A member answering nothing is an error, not a blank candidate for the judge."""
    fake.script(A, Reply(text=""))
    fake.script(B, Reply(text="something"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B))
    assert result.panel_responses[0].error_kind == "empty"
    assert len(result.successful_panel) == 1


async def test_rate_limited_member_is_retried_after_retry_after(fake: FakeUpstream) -> None:
    """A 429 with Retry-After is retried after exactly that long, and then answers."""
    clock = ManualClock()
    fake.script(A, Reply(status=429, retry_after=3), Reply(text="after the wait"))
    fake.script(B, Reply(text="b"))
    async with make_engine(fake, clock=clock) as engine:
        task = asyncio.create_task(engine.fuse("q", panel=panel(A, B)))
        await eventually(lambda: clock.sleeps == [3.0])
        assert len(fake.requests_for(A)) == 1
        clock.advance(3)
        result = await task
    assert result.panel_responses[0].content == "after the wait"
    assert result.panel_responses[0].attempts == 2
    assert len(fake.requests_for(A)) == 2


async def test_bad_request_is_not_retried(fake: FakeUpstream) -> None:
    """A 400 is final: one request only."""
    fake.script(A, Reply(status=400), Reply(text="never reached"))
    fake.script(B, Reply(text="b"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B))
    assert len(fake.requests_for(A)) == 1
    assert result.panel_responses[0].attempts == 1
    assert not result.panel_responses[0].ok


async def test_judge_failure_falls_back_to_next_judge(fake: FakeUpstream) -> None:
    """When the judge fails, the first fallback judge answers."""
    fake.script(A, Reply(text="a"))
    fake.script(JUDGE, Reply(status=400, error_message="judge broke"))
    fake.script("judge/backup", Reply(text="backup verdict"))
    chosen = panel(A, judge_fallback_models=["judge/backup"])
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=chosen)
    assert result.answer == "backup verdict"
    assert result.degraded is None
    assert [a.model for a in result.judge_attempts] == [JUDGE, "judge/backup"]
    assert result.judge_attempts[0].error is not None


async def test_all_judges_failing_degrades_to_best_member(fake: FakeUpstream) -> None:
    """Every judge failed: the member answer the panel agrees with most stands in."""
    fake.script(A, Reply(text="the answer is 42 because six times seven"))
    fake.script(B, Reply(text="completely unrelated rambling about fish"))
    fake.script(C, Reply(text="the answer is 42, six times seven"))
    fake.script(JUDGE, Reply(status=500))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, C))
    assert result.degraded == "judge_failed"
    assert result.judge_response is None
    assert result.answer == "the answer is 42 because six times seven"
    assert len(fake.requests_for(JUDGE)) == 3  # retried: 500 is retryable


async def test_skip_judge_if_single_answer(fake: FakeUpstream) -> None:
    """With skip_judge_if_single, one surviving answer is returned without a judge call."""
    fake.script(A, Reply(text="lonely answer"))
    fake.script(B, Reply(status=403))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, skip_judge_if_single=True))
    assert result.answer == "lonely answer"
    assert result.judge_response is None
    assert fake.requests_for(JUDGE) == []


async def test_deadline_with_quorum_cancels_the_straggler(fake: FakeUpstream) -> None:
    """Past the deadline with the quorum in, the judge runs and the straggler is cancelled."""
    clock = ManualClock()
    fake.script(A, Reply(text="a"))
    fake.script(B, Reply(text="b"))
    fake.script(C, Reply(hang=True))
    chosen = panel(A, B, C, deadline_s=2.0, min_responses=2)
    async with make_engine(fake, clock=clock) as engine:
        task = asyncio.create_task(engine.fuse("q", panel=chosen))
        await eventually(lambda: sorted(fake.completed) == sorted([A, B]))
        await asyncio.sleep(0.05)
        assert not task.done()  # the deadline has not passed yet: still waiting for C
        clock.advance(2.0)
        result = await asyncio.wait_for(task, 5)
    straggler = result.panel_responses[2]
    assert straggler.error_kind == "deadline"
    assert result.answer is not None
    await eventually(lambda: C in fake.cancelled)


async def test_deadline_below_quorum_keeps_waiting(fake: FakeUpstream) -> None:
    """Past the deadline with fewer than min_responses answers, the engine waits for more."""
    clock = ManualClock()
    fake.script(A, Reply(text="a"))
    fake.script(B, Reply(text="b", delay_s=0.4))
    fake.script(C, Reply(hang=True))
    chosen = panel(A, B, C, deadline_s=1.0, min_responses=2)
    async with make_engine(fake, clock=clock) as engine:
        task = asyncio.create_task(engine.fuse("q", panel=chosen))
        await eventually(lambda: fake.completed == [A])
        clock.advance(1.0)
        await asyncio.sleep(0.1)
        assert not task.done()  # only one answer: below the quorum of two
        result = await asyncio.wait_for(task, 5)
    assert [r.ok for r in result.panel_responses] == [True, True, False]
    assert result.panel_responses[2].error_kind == "deadline"


async def test_tool_call_fusion_judge_answers_with_native_tool_call(fake: FakeUpstream) -> None:
    """Members propose tool calls; the judge gets the tools and its tool call is the answer."""
    fake.script(A, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    fake.script(B, Reply(tool_calls=[FakeToolCall("get_weather", '{"city":"Paris"}')]))
    fake.script(JUDGE, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    params = GenerationParams(tools=[WEATHER_TOOL], tool_choice="auto")
    async with make_engine(fake) as engine:
        result = await engine.fuse("Weather in Paris?", panel=panel(A, B), params=params)
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls is not None
    assert result.tool_calls[0].function.name == "get_weather"
    assert json.loads(result.tool_calls[0].function.arguments) == {"city": "Paris"}
    judge_body = fake.requests_for(JUDGE)[0].body
    assert judge_body["tools"] == [WEATHER_TOOL]
    assert judge_body["tool_choice"] == "auto"
    assert "tool_synthesis" not in json.dumps(judge_body)  # the template text, not its name
    assert "Proposed tool calls" in judge_body["messages"][-1]["content"]
    assert fake.requests_for(A)[0].body["tools"] == [WEATHER_TOOL]


async def test_tool_round_trip_history_reaches_members_and_judge(fake: FakeUpstream) -> None:
    """A conversation with a tool call and its result is forwarded intact; text answer wins."""
    conversation = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    fake.script(JUDGE, Reply(text="It is 21 °C in Paris."))
    params = GenerationParams(tools=[WEATHER_TOOL])
    async with make_engine(fake) as engine:
        result = await engine.fuse(conversation, panel=panel(A, B), params=params)
    assert result.answer == "It is 21 °C in Paris."
    assert result.finish_reason == "stop"
    assert fake.requests_for(A)[0].body["messages"] == conversation
    judge_messages = fake.requests_for(JUDGE)[0].body["messages"]
    assert judge_messages[1:4] == conversation


async def test_judge_with_invalid_tool_arguments_falls_back(fake: FakeUpstream) -> None:
    """A judge tool call whose arguments are not JSON is rejected; the fallback judge answers."""
    fake.script(A, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')]))
    fake.script(JUDGE, Reply(tool_calls=[FakeToolCall("get_weather", '{"city": Par')]))
    fake.script("judge/backup", Reply(tool_calls=[FakeToolCall("get_weather", '{"city":"P"}')]))
    params = GenerationParams(tools=[WEATHER_TOOL])
    chosen = panel(A, judge_fallback_models=["judge/backup"])
    async with make_engine(fake) as engine:
        result = await engine.fuse("w?", panel=chosen, params=params)
    assert result.judge_attempts[0].error_kind == "invalid_response"
    assert result.tool_calls is not None
    assert json.loads(result.tool_calls[0].function.arguments) == {"city": "P"}


async def test_parameters_are_routed_to_members_and_judge(fake: FakeUpstream) -> None:
    """Sampling goes to members (member value wins), shaping fields to the judge."""
    params = GenerationParams(
        temperature=0.3,
        seed=7,
        max_tokens=50,
        stop=["END"],
        response_format={"type": "json_object"},
        extra={"logit_bias": {"1": 2}},
    )
    members = [PanelMember(slug=A, temperature=1.2, max_tokens=400), PanelMember(slug=B)]
    async with make_engine(fake) as engine:
        await engine.fuse("q", panel=panel(*members, judge_temperature=0.1), params=params)
    body_a = fake.requests_for(A)[0].body
    body_b = fake.requests_for(B)[0].body
    judge = fake.requests_for(JUDGE)[0].body
    assert (body_a["temperature"], body_a["max_tokens"], body_a["seed"]) == (1.2, 400, 7)
    assert body_b["temperature"] == 0.3 and "max_tokens" not in body_b
    assert "stop" not in body_b and "response_format" not in body_b
    assert judge["max_tokens"] == 50 and judge["stop"] == ["END"]
    assert judge["response_format"] == {"type": "json_object"}
    assert judge["temperature"] == 0.1
    assert body_b["logit_bias"] == {"1": 2} and judge["logit_bias"] == {"1": 2}


async def test_openrouter_members_get_web_plugin_usage_and_provider_options(
    fake: FakeUpstream,
) -> None:
    """Web search adds OpenRouter's web plugin to members; usage accounting is requested."""
    chosen = panel(A, provider_options={"data_collection": "deny"})
    async with make_engine(fake) as engine:
        await engine.fuse("news?", panel=chosen, web_search=True)
    request = fake.requests_for(A)[0]
    assert request.body["plugins"] == [{"id": "web"}]
    assert request.body["usage"] == {"include": True}
    assert request.body["provider"] == {"data_collection": "deny"}
    assert request.headers["authorization"] == "Bearer test-key"
    assert "x-openrouter-title" in request.headers
    assert "plugins" not in fake.requests_for(JUDGE)[0].body


async def test_reasoning_is_kept_apart_from_the_answer(fake: FakeUpstream) -> None:
    """A member's reasoning text is in .reasoning, not in the content the judge fuses."""
    fake.script(A, Reply(text="42", reasoning="let me think about sixes and sevens"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A))
    member = result.panel_responses[0]
    assert member.content == "42"
    assert member.reasoning == "let me think about sixes and sevens"
    closing = fake.requests_for(JUDGE)[0].body["messages"][-1]["content"]
    assert "sixes and sevens" not in closing


async def test_cancelling_fuse_cancels_every_member_call(fake: FakeUpstream) -> None:
    """Cancelling the fusion abandons every upstream call still running."""
    for model in (A, B, C):
        fake.script(model, Reply(hang=True))
    async with make_engine(fake) as engine:
        task = asyncio.create_task(engine.fuse("q", panel=panel(A, B, C)))
        await eventually(lambda: len(fake.received) == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(lambda: sorted(fake.cancelled) == sorted([A, B, C]))
    assert fake.requests_for(JUDGE) == []


async def test_listener_sees_members_then_streamed_judge(fake: FakeUpstream) -> None:
    """With stream_judge, members are reported as they finish and judge chunks as they come."""
    fake.script(A, Reply(text="a"))
    fake.script(B, Reply(text="b", delay_s=0.1))
    fake.script(JUDGE, Reply(text="a fused answer in several chunks", chunk_size=4))
    events: list[FusionEvent] = []
    async with make_engine(fake) as engine:
        plan = engine.plan("q", panel=panel(A, B))
        result = await engine.run(plan, listener=events.append, stream_judge=True)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["MemberFinished", "MemberFinished", "JudgeStarted"]
    first = events[0]
    assert isinstance(first, MemberFinished) and first.response.model == A
    deltas = [e for e in events if isinstance(e, JudgeDelta)]
    assert len(deltas) > 3
    text = "".join(c.delta.content or "" for e in deltas for c in e.chunk.choices)
    assert text == "a fused answer in several chunks" == result.answer
    assert result.judge_response is not None and result.judge_response.tokens_out > 0
    assert fake.requests_for(JUDGE)[0].body["stream"] is True


async def test_streamed_judge_failing_before_first_token_falls_back(fake: FakeUpstream) -> None:
    """A streamed judge that fails before any chunk is replaced by the member stand-in."""
    fake.script(A, Reply(text="member answer"))
    fake.script(JUDGE, Reply(status=400))
    events: list[FusionEvent] = []
    async with make_engine(fake) as engine:
        plan = engine.plan("q", panel=panel(A))
        result = await engine.run(plan, listener=events.append, stream_judge=True)
    assert result.degraded == "judge_failed"
    assert result.answer == "member answer"
    assert not any(isinstance(e, JudgeDelta) for e in events)
    assert any(isinstance(e, JudgeStarted) for e in events)


async def test_streamed_judge_failing_mid_answer_raises(fake: FakeUpstream) -> None:
    """Once judge chunks went out, a mid-stream failure is an error, not a silent switch."""
    fake.script(A, Reply(text="member answer"))
    fake.script(JUDGE, Reply(text="partial verdict text here", stream_error_after_chunks=2))
    async with make_engine(fake) as engine:
        plan = engine.plan("q", panel=panel(A))
        with pytest.raises(JudgeFailedError):
            await engine.run(plan, listener=lambda event: None, stream_judge=True)


async def test_named_panel_and_fusion_prefix(fake: FakeUpstream) -> None:
    """A shipped panel is found by name, with or without the fusion/ prefix."""
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel="fusion/budget")
    assert result.panel == "budget"
    assert [r.model for r in result.panel_responses] == [
        "xiaomi/mimo-v2.5",
        "deepseek/deepseek-v4-flash",
        "xiaomi/mimo-v2.5-pro",
    ]
    assert len(fake.requests_for("qwen/qwen3.7-plus")) == 1


async def test_ad_hoc_panel_from_slugs_and_dicts(fake: FakeUpstream) -> None:
    """Members given as slugs or dicts form an ad-hoc panel; max_tokens is forwarded."""
    async with make_engine(fake) as engine:
        result = await engine.fuse(
            "q", panel=[A, {"slug": B, "max_tokens": 64}], judge_model="judge/adhoc"
        )
    assert result.panel == "ad-hoc"
    assert fake.requests_for(B)[0].body["max_tokens"] == 64
    assert len(fake.requests_for("judge/adhoc")) == 1


async def test_request_errors_are_raised_before_any_call(fake: FakeUpstream) -> None:
    """Unknown panel, template, bad ad-hoc panel or messages fail with nothing sent."""
    async with make_engine(fake) as engine:
        with pytest.raises(UnknownPanelError):
            await engine.fuse("q", panel="nope")
        with pytest.raises(UnknownJudgeTemplateError):
            await engine.fuse("q", panel=panel(A), judge_template="nope")
        with pytest.raises(InvalidRequestError) as no_judge:
            await engine.fuse("q", panel=[A])
        assert no_judge.value.param == "judge_model"
        with pytest.raises(InvalidRequestError) as bad_member:
            await engine.fuse("q", panel=[{"slug": A, "temperature": 9}], judge_model=JUDGE)
        assert bad_member.value.param == "models[0].temperature"
        with pytest.raises(InvalidRequestError) as bad_role:
            await engine.fuse([{"role": "robot", "content": "hi"}], panel=panel(A))
        assert bad_role.value.param == "messages[0].role"
        with pytest.raises(InvalidRequestError):
            await engine.fuse("   ", panel=panel(A))
    assert fake.received == []


async def test_missing_provider_key_fails_before_spending(fake: FakeUpstream) -> None:
    """Without OPENROUTER_API_KEY the fusion fails with a 503 naming the variable."""
    env = env_for(fake)
    del env["OPENROUTER_API_KEY"]
    async with make_engine(fake, env=env) as engine:
        with pytest.raises(ProviderKeyMissingError) as raised:
            await engine.fuse("q", panel=panel(A))
    assert raised.value.status_code == 503
    assert "OPENROUTER_API_KEY" in raised.value.message
    assert fake.received == []


async def test_system_prompt_is_folded_into_the_judge_instructions(fake: FakeUpstream) -> None:
    """The client's system prompt reaches members as-is and the judge inside its system message."""
    conversation = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Capital of Italy?"},
    ]
    async with make_engine(fake) as engine:
        await engine.fuse(conversation, panel=panel(A))
    assert fake.requests_for(A)[0].body["messages"] == conversation
    judge_messages = fake.requests_for(JUDGE)[0].body["messages"]
    assert [m["role"] for m in judge_messages] == ["system", "user", "user"]
    assert "Answer in French." in judge_messages[0]["content"]
    assert judge_messages[1] == conversation[1]


async def test_streamed_judge_is_bounded_by_its_time_budget(fake: FakeUpstream) -> None:
    """A judge stream that dribbles past member_timeout_s is cut off, not awaited forever."""
    fake.script(A, Reply(text="member answer"))
    fake.script(JUDGE, Reply(text="a b c d e f g h i j k l", chunk_size=2, chunk_delay_s=0.2))
    async with make_engine(fake) as engine:
        plan = engine.plan("q", panel=panel(A, member_timeout_s=0.5))
        with pytest.raises(JudgeFailedError, match="ran out of time"):
            await engine.run(plan, listener=lambda event: None, stream_judge=True)
    await eventually(lambda: JUDGE in fake.cancelled)


async def test_streamed_judge_ending_in_a_choice_error_is_an_error(fake: FakeUpstream) -> None:
    """A judge stream ending with finish_reason "error" fails loudly, never as a cut answer."""
    fake.script(A, Reply(text="member answer"))
    fake.script(JUDGE, Reply(text="half a verdict", choice_error="provider died"))
    async with make_engine(fake) as engine:
        plan = engine.plan("q", panel=panel(A))
        with pytest.raises(JudgeFailedError):
            await engine.run(plan, listener=lambda event: None, stream_judge=True)
