"""Agreement between panel members (pure), and the consensus short-cut in the engine."""

from __future__ import annotations

import pytest

from fusion_engine.agreement import final_answer, measure_agreement
from fusion_engine.protocol import FunctionCall, ToolCall
from fusion_engine.results import PanelResponse
from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import make_engine, panel


def said(
    index: int, content: str | None = None, calls: list[tuple[str, str]] | None = None
) -> PanelResponse:
    tool_calls = [
        ToolCall(id=f"c{n}", function=FunctionCall(name=name, arguments=args))
        for n, (name, args) in enumerate(calls or [])
    ] or None
    return PanelResponse(index=index, model=f"m{index}", content=content, tool_calls=tool_calls)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step one... so #### 1,234", "1234"),
        ("The answer is 42.", "42"),
        ("\\boxed{0.50}", "0.5"),
        ("(C)", "C"),
        ("Answer: b", "b"),
        ("Yes.", "yes"),
        ("Paris", "paris"),
        ("A long explanation " * 10, None),
    ],
)
def test_final_answer(text: str, expected: str | None) -> None:
    """Short or concluded answers normalise to comparable final answers; long prose has none."""
    assert final_answer(text) == expected


def test_equal_final_answers_agree_fully() -> None:
    """Differently worded answers with the same final number agree completely."""
    agreement = measure_agreement([said(0, "#### 42"), said(1, "The answer is 42."), said(2, "42")])
    assert agreement is not None
    assert (agreement.score, agreement.method, agreement.outliers) == (1.0, "answer", [])


def test_the_odd_answer_stands_apart() -> None:
    """Two of three agree: score 2/3 and the third is the outlier."""
    agreement = measure_agreement([said(0, "#### 42"), said(1, "#### 41"), said(2, "answer: 42")])
    assert agreement is not None
    assert agreement.score == pytest.approx(2 / 3)
    assert (agreement.majority, agreement.outliers) == ([0, 2], [1])


def test_tool_calls_agree_on_name_and_parsed_arguments() -> None:
    """The same call with arguments in another key order or spacing agrees."""
    agreement = measure_agreement(
        [
            said(0, calls=[("get_weather", '{"city": "Paris", "unit": "c"}')]),
            said(1, calls=[("get_weather", '{"unit":"c","city":"Paris"}')]),
            said(2, calls=[("get_weather", '{"city": "Rome"}')]),
        ]
    )
    assert agreement is not None
    assert (agreement.method, agreement.outliers) == ("tool_calls", [2])


def test_prose_similarity_and_outliers() -> None:
    """Prose is compared by word overlap; an unrelated answer stands apart."""
    base = "The sky looks blue because air molecules scatter short blue wavelengths of sunlight"
    agreement = measure_agreement(
        [said(0, base), said(1, base + " more strongly"), said(2, base + " in every direction"),
         said(3, "Cats are small furry animals that many people keep as pets at home today")]
    )  # fmt: skip
    assert agreement is not None
    assert agreement.method == "text"
    assert agreement.outliers == [3]
    assert 0 < agreement.score < 1


def test_fewer_than_two_answers_have_no_agreement() -> None:
    """Agreement needs at least two successful answers."""
    failed = PanelResponse(index=1, model="m1", error="boom")
    assert measure_agreement([said(0, "42"), failed]) is None


A, B, C, JUDGE = "acme/a", "acme/b", "acme/c", "judge/model"


async def test_consensus_skips_the_judge(fake: FakeUpstream) -> None:
    """Agreement at or above consensus_skip_judge answers with the majority, no judge call."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="The answer is 42."))
    fake.script(C, Reply(text="#### 41"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, C, consensus_skip_judge=0.6))
    assert result.judge_skipped == "consensus"
    assert result.judge_response is None
    assert result.answer in {"#### 42", "The answer is 42."}
    assert fake.requests_for(JUDGE) == []
    assert result.agreement is not None and result.agreement.outliers == [2]


async def test_disagreement_still_asks_the_judge_with_a_hint(fake: FakeUpstream) -> None:
    """Below the threshold the judge is asked, and told which anonymised answer stands apart."""
    fake.script(A, Reply(text="#### 42"))
    fake.script(B, Reply(text="#### 7"))
    fake.script(C, Reply(text="#### 42"))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, C, consensus_skip_judge=0.9))
    assert result.judge_skipped is None
    closing = fake.requests_for(JUDGE)[0].body["messages"][-1]["content"]
    assert "mostly agree" in closing and "Answer 2 stand(s) apart" in closing


async def test_tool_call_consensus_returns_the_agreed_call(fake: FakeUpstream) -> None:
    """Members proposing the same tool call skip the judge and return that call."""
    call = FakeToolCall("get_weather", '{"city": "Paris"}')
    for member in (A, B):
        fake.script(member, Reply(tool_calls=[call]))
    async with make_engine(fake) as engine:
        result = await engine.fuse("q", panel=panel(A, B, consensus_skip_judge=1.0))
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls is not None and result.tool_calls[0].function.name == "get_weather"
    assert fake.requests_for(JUDGE) == []
