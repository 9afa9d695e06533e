"""Pure decisions: quorum, failure status, stand-in choice, tool-call validity."""

from __future__ import annotations

from fusion_engine.errors import PanelTimeoutError
from fusion_engine.protocol import FunctionCall, ToolCall
from fusion_engine.quorum import (
    best_member_answer,
    invalid_tool_call,
    panel_failure,
    quorum_reached,
)
from fusion_engine.results import PanelResponse


def ok(index: int, content: str = "x") -> PanelResponse:
    return PanelResponse(index=index, model=f"m{index}", content=content)


def failed(index: int, kind: str = "http_error") -> PanelResponse:
    return PanelResponse(index=index, model=f"m{index}", error="boom", error_kind=kind)  # type: ignore[arg-type]


def test_everyone_answered_ends_the_wait() -> None:
    """No member pending: stop, even with failures and no deadline."""
    assert quorum_reached([failed(0), ok(1)], pending=0, min_responses=2, deadline_passed=False)


def test_no_deadline_means_wait_for_all() -> None:
    """Before the deadline, stragglers are waited for whatever the quorum."""
    assert not quorum_reached([ok(0), ok(1)], pending=1, min_responses=1, deadline_passed=False)


def test_deadline_with_quorum_stops() -> None:
    """After the deadline, enough successful answers end the wait."""
    assert quorum_reached([ok(0), ok(1)], pending=1, min_responses=2, deadline_passed=True)


def test_deadline_counts_only_successful_answers() -> None:
    """Failures do not count towards the quorum."""
    assert not quorum_reached([ok(0), failed(1)], pending=1, min_responses=2, deadline_passed=True)


def test_all_timeouts_is_504_otherwise_502() -> None:
    """504 only when every member failed by timeout or deadline; else 502."""
    assert isinstance(
        panel_failure([failed(0, "timeout"), failed(1, "deadline")]), PanelTimeoutError
    )
    mixed = panel_failure([failed(0, "timeout"), failed(1, "http_error")])
    assert not isinstance(mixed, PanelTimeoutError)
    assert mixed.status_code == 502
    assert "m0: boom" in mixed.message


def test_best_member_answer_is_the_medoid() -> None:
    """The answer sharing most words with the others stands in."""
    answers = [
        ok(0, "cats are small furry animals"),
        ok(1, "the capital of france is paris"),
        ok(2, "paris is the capital of france indeed"),
        ok(3, "france capital paris"),
    ]
    # Answer 1 overlaps most with answers 2 and 3; the odd one out (0) never stands in.
    assert best_member_answer(answers).index == 1


def test_best_member_answer_prefers_panel_order_for_two() -> None:
    """With one or two answers there is no majority: the first in panel order wins."""
    assert best_member_answer([ok(1, "b"), ok(0, "a")]).index == 0


def test_invalid_tool_calls_are_named() -> None:
    """Arguments must be a JSON object and the function must have a name."""

    def call(name: str, arguments: str) -> ToolCall:
        return ToolCall(id="c", function=FunctionCall(name=name, arguments=arguments))

    assert invalid_tool_call([call("f", '{"a": 1}')]) is None
    assert invalid_tool_call([call("f", "")]) is None
    assert "not valid JSON" in (invalid_tool_call([call("f", "{a")]) or "")
    assert "not a JSON object" in (invalid_tool_call([call("f", "[1]")]) or "")
    assert "no function name" in (invalid_tool_call([call("", "{}")]) or "")
