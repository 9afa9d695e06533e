"""Pure decisions over the answers so far: when to stop waiting, how a panel failed, and which
member answer stands in when the judge cannot answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from .agreement import Agreement, jaccard, word_set
from .errors import PanelFailedError, PanelTimeoutError
from .panels import Panel
from .protocol import ToolCall
from .results import JudgeSkip, PanelResponse

_TIMEOUT_KINDS = frozenset({"timeout", "deadline"})


def quorum_reached(
    finished: Iterable[PanelResponse], *, pending: int, min_responses: int, deadline_passed: bool
) -> bool:
    """Whether to stop waiting for members.

    Everyone answered; or the deadline passed and at least ``min_responses`` members answered
    successfully. Below the quorum we keep waiting (each member is bounded by its own timeout).
    """
    if pending == 0:
        return True
    return deadline_passed and sum(1 for response in finished if response.ok) >= min_responses


def panel_failure(responses: Sequence[PanelResponse]) -> PanelFailedError:
    """The error for a panel where nobody answered: 504 if every failure was a timeout, else 502."""
    reasons = "; ".join(f"{r.model}: {r.error or 'no answer'}" for r in responses)
    timed_out = all(response.error_kind in _TIMEOUT_KINDS for response in responses)
    if timed_out:
        return PanelTimeoutError(
            f"no panel member answered in time ({reasons})", responses=list(responses)
        )
    return PanelFailedError(f"every panel member failed ({reasons})", responses=list(responses))


def best_member_answer(answers: Sequence[PanelResponse]) -> PanelResponse:
    """The answer closest to all the others (the medoid), ties to panel order.

    Used when the judge fails: the answer the panel agrees with most is the safest stand-in.
    """
    if not answers:
        raise ValueError("best_member_answer needs at least one answer")
    ordered = sorted(answers, key=lambda answer: answer.index)
    if len(ordered) <= 2:
        return ordered[0]
    keys = [_comparison_key(answer) for answer in ordered]

    def closeness(position: int) -> float:
        return sum(jaccard(keys[position], other) for other in keys if other is not keys[position])

    best = max(range(len(ordered)), key=lambda position: (closeness(position), -position))
    return ordered[best]


def _comparison_key(answer: PanelResponse) -> frozenset[str]:
    text = answer.content or ""
    if answer.tool_calls:
        text += " ".join(f"{c.function.name} {c.function.arguments}" for c in answer.tool_calls)
    return word_set(text)


def invalid_tool_call(calls: Sequence[ToolCall] | None) -> str | None:
    """Why these tool calls cannot be sent to a client (no name, arguments not a JSON object)."""
    for call in calls or ():
        if not call.function.name:
            return "a tool call has no function name"
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            return f"tool call {call.function.name!r} has arguments that are not valid JSON"
        if not isinstance(arguments, dict):
            return f"tool call {call.function.name!r} has arguments that are not a JSON object"
    return None


def judge_skip(
    panel: Panel, answers: Sequence[PanelResponse], agreement: Agreement | None
) -> JudgeSkip | None:
    """Whether the judge can be spared: one answer and ``skip_judge_if_single``, or agreement at
    or above ``consensus_skip_judge`` among at least ``min_responses`` answers."""
    if panel.skip_judge_if_single and len(answers) == 1:
        return "single"
    threshold = panel.consensus_skip_judge
    if threshold is None or agreement is None or len(answers) < panel.min_responses:
        return None
    return "consensus" if agreement.score >= threshold else None


def majority_of(
    answers: Sequence[PanelResponse], agreement: Agreement | None
) -> list[PanelResponse]:
    """The answers in the panel's largest agreeing group (all of them without a measure)."""
    if agreement is None:
        return list(answers)
    majority = [answer for answer in answers if answer.index in agreement.majority]
    return majority or list(answers)
