"""Pure decisions over the answers so far: when to stop waiting, how a panel failed, and which
member answer stands in when the judge cannot answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import msgspec

from .agreement import jaccard, measure_agreement, tool_call_key, word_set
from .errors import (
    PanelFailedError,
    PanelRateLimitedError,
    PanelRejectedError,
    PanelTimeoutError,
)
from .panels import Panel
from .protocol import FunctionCall, ToolCall
from .results import Agreement, JudgeSkip, PanelResponse, ToolVote

_TIMEOUT_KINDS = frozenset({"timeout", "deadline"})
#: Statuses that say the request itself is at fault: when every member answers the same one,
#: the client gets it (a 502 would make SDKs retry a request that cannot succeed).
CLIENT_SIDE_STATUSES = frozenset({400, 404, 413, 422})


def quorum_reached(
    finished: Iterable[PanelResponse],
    *,
    pending: int,
    min_responses: int,
    deadline_passed: bool,
    early: bool = False,
) -> bool:
    """Whether to stop waiting for members.

    Everyone answered; or the deadline passed and at least ``min_responses`` members answered
    successfully; or, with ``early``, at least ``min_responses`` answers already agree. Below
    the quorum we keep waiting (each member is bounded by its own timeout).
    """
    if pending == 0:
        return True
    answers = [response for response in finished if response.ok]
    if deadline_passed and len(answers) >= min_responses:
        return True
    if early and len(answers) >= min_responses:
        agreement = measure_agreement(answers)
        return agreement is not None and len(agreement.majority) >= min_responses
    return False


def panel_failure(responses: Sequence[PanelResponse]) -> PanelFailedError:
    """The error for a panel where nobody answered.

    Every member refused the request with the same client-side status (400, 404, 413, 422):
    that status with the first member's provider fields, because the request is at fault and a
    retry would fail alike. Every member rate limited: 429 with the longest ``Retry-After``.
    Every failure a timeout: 504. Anything else: 502.
    """
    reasons = "; ".join(f"{r.model}: {r.error or 'no answer'}" for r in responses)
    everyone = list(responses)
    statuses = {r.provider_error.status if r.provider_error else None for r in responses}
    first = responses[0] if responses else None
    if first is not None and first.provider_error is not None and len(statuses) == 1:
        status = first.provider_error.status
        if status in CLIENT_SIDE_STATUSES:
            others = (
                f" (and the {len(responses) - 1} other members alike)" if len(responses) > 1 else ""
            )
            return PanelRejectedError(
                f"every panel member refused the request; {first.model}: {first.error}{others}",
                status=status, info=first.provider_error, responses=everyone,
            )  # fmt: skip
        if status == 429:
            waits = [r.provider_error.retry_after for r in responses if r.provider_error]
            known = [wait for wait in waits if wait is not None]
            # No member was tried twice: each asked to wait longer than its time allowed, so
            # a client that waits that long may get through. Otherwise the retries were had.
            unretried = all(response.attempts == 1 for response in responses)
            return PanelRateLimitedError(
                f"every panel member is rate limited ({reasons})",
                retry_after=max(known) if known else None,
                retry_later=bool(known) and unretried, responses=everyone,
            )  # fmt: skip
    timed_out = all(response.error_kind in _TIMEOUT_KINDS for response in responses)
    if timed_out:
        return PanelTimeoutError(
            f"no panel member answered in time ({reasons})", responses=everyone
        )
    return PanelFailedError(f"every panel member failed ({reasons})", responses=everyone)


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
    words = word_set(answer.content or "")
    for call in answer.tool_calls or ():
        words |= word_set(f"{call.function.name} {call.function.arguments}")
    return words


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


def cascade_size(panel: Panel) -> int:
    """How many members a cascade asks first."""
    return max(2, panel.min_responses)


def cascade_settled(panel: Panel, agreement: Agreement | None, answered: int) -> bool:
    """Whether the cascade's first members agree enough to answer without the rest (their
    agreement reaches ``consensus_skip_judge``, or is unanimous when that is unset)."""
    threshold = panel.consensus_skip_judge if panel.consensus_skip_judge is not None else 1.0
    return (
        agreement is not None and answered >= cascade_size(panel) and agreement.score >= threshold
    )


def tool_votes(answers: Sequence[PanelResponse]) -> list[ToolVote]:
    """Every distinct proposed tool call with the members who proposed it, most votes first."""
    votes: dict[str, tuple[ToolCall, list[int]]] = {}
    for answer in answers:
        for call in answer.tool_calls or ():
            entry = votes.setdefault(tool_call_key(call), (call, []))
            if answer.index not in entry[1]:
                entry[1].append(answer.index)
    ranked = sorted(votes.values(), key=lambda entry: (-len(entry[1]), entry[1][0]))
    return [
        ToolVote(
            name=call.function.name, arguments=call.function.arguments, votes=len(members),
            members=members,
        )
        for call, members in ranked
    ]  # fmt: skip


def within_tool_quorum(
    verdict: PanelResponse, votes: Sequence[ToolVote], quorum: int
) -> PanelResponse:
    """The judge's verdict, its tool calls kept only if each had ``quorum`` votes; otherwise the
    most-voted call that has them stands in (and without one, the calls are dropped)."""
    if not verdict.tool_calls:
        return verdict
    qualified = {
        tool_call_key(ToolCall(id="v", function=FunctionCall(name=v.name, arguments=v.arguments)))
        for v in votes
        if v.votes >= quorum
    }
    if all(tool_call_key(call) in qualified for call in verdict.tool_calls):
        return verdict
    top = next((v for v in votes if v.votes >= quorum), None)
    if top is None:
        return msgspec.structs.replace(
            verdict, tool_calls=None, error="tool call below the tool quorum",
            error_kind="invalid_response",
        )  # fmt: skip
    call = ToolCall(id=verdict.tool_calls[0].id, function=FunctionCall(top.name, top.arguments))
    return msgspec.structs.replace(verdict, tool_calls=[call])


def quorum_stand_in(
    answers: Sequence[PanelResponse],
    agreement: Agreement | None,
    votes: Sequence[ToolVote],
    quorum: int | None,
) -> PanelResponse | None:
    """The member answer that stands in for the judge, held to the same ``tool_quorum``.

    The best answer of the majority (``best_member_answer``) is passed through
    ``within_tool_quorum`` like a judge's verdict. When no proposed call reached the quorum,
    only words may stand in: the best answer that has text, without its calls. ``None`` when
    no member answer passes (every one is an unqualified tool call and nothing else).
    """
    best = best_member_answer(majority_of(answers, agreement))
    if quorum is None or not best.tool_calls:
        return best
    allowed = within_tool_quorum(best, votes, quorum)
    if allowed.ok:
        return allowed
    words = [
        msgspec.structs.replace(answer, tool_calls=None, finish_reason="stop")
        for answer in answers
        if answer.content
    ]
    return best_member_answer(words) if words else None
