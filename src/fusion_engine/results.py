"""What a fusion produces: one ``PanelResponse`` per call and the ``FusionResult``.

Pure data, so the cache, the eval harness and the server read results without importing the
engine. Partial failure is data here (a member's ``error``), never an exception.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .errors import ProviderErrorInfo
from .protocol import ChatCompletionChunk, ToolCall

#: Why a call produced no answer, in a closed vocabulary (used for status decisions and metrics).
ErrorKind = Literal[
    "timeout",
    "deadline",
    "rate_limited",
    "http_error",
    "connection",
    "invalid_response",
    "empty",
    "cancelled",
]


class PanelResponse(msgspec.Struct, kw_only=True, frozen=True):
    """One upstream call's outcome: a member's answer, or the judge's.

    ``index`` is the member's position in the panel (for a judge: its position in the chain of
    judge model and fallbacks). ``cost_usd`` is ``None`` when the provider reported none; it is
    never estimated.
    """

    index: int
    model: str
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    #: Of ``latency_ms``, the time spent queued for a provider or model concurrency slot.
    queue_ms: float = 0.0
    cost_usd: float | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    attempts: int = 1
    #: The provider's status and error fields when it refused the call (decides the status a
    #: panel where every member failed answers with).
    provider_error: ProviderErrorInfo | None = None

    @property
    def ok(self) -> bool:
        """Whether this call produced a usable answer (text or tool calls)."""
        return self.error is None and bool(self.content or self.tool_calls)


#: How agreement was measured (see ``agreement.py``, which computes it).
AgreementMethod = Literal["tool_calls", "answer", "text"]


class Agreement(msgspec.Struct, frozen=True, kw_only=True):
    """The panel's agreement: a score in [0, 1], how it was measured, who stands apart.

    ``majority`` and ``outliers`` are members' panel indices.
    """

    score: float
    method: AgreementMethod
    majority: list[int]
    outliers: list[int]


#: Why the answer is not the judge's: every judge failed and a member answer stands in.
Degraded = Literal["judge_failed"]
JudgeSkip = Literal["consensus", "single", "cascade"]


class ToolVote(msgspec.Struct, frozen=True, kw_only=True):
    """How many members proposed one tool call (same function, equivalent arguments)."""

    name: str
    arguments: str
    votes: int
    members: list[int]


class FusionResult(msgspec.Struct, kw_only=True, frozen=True):
    """The fused answer with every call that went into it.

    ``total_cost`` is ``None`` when any call's cost is unknown: a partial sum would understate
    what was spent.
    """

    answer: str | None
    tool_calls: list[ToolCall] | None = None
    finish_reason: str = "stop"
    panel: str | None = None
    panel_responses: list[PanelResponse] = msgspec.field(default_factory=list)
    judge_response: PanelResponse | None = None
    judge_attempts: list[PanelResponse] = msgspec.field(default_factory=list)
    total_cost: float | None = None
    total_latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    degraded: Degraded | None = None
    cached: bool = False
    #: Members the cost ceiling left out of this fusion.
    dropped_members: list[str] = msgspec.field(default_factory=list)
    #: How much the members agreed (``None`` with fewer than two answers).
    agreement: Agreement | None = None
    #: Why no judge was asked: the panel agreed (``consensus``), the cascade's first members
    #: agreed (``cascade``), or only one member answered (``single``).
    judge_skipped: JudgeSkip | None = None
    #: With ``tool_quorum``: the members' votes on each proposed tool call.
    tool_votes: list[ToolVote] = msgspec.field(default_factory=list)

    @property
    def successful_panel(self) -> list[PanelResponse]:
        """The members that answered."""
        return [response for response in self.panel_responses if response.ok]


def sum_costs(responses: list[PanelResponse]) -> float | None:
    """Total cost of calls, or ``None`` when any call has no reported cost.

    A call that failed before the provider produced anything costs nothing and is skipped;
    a call that produced tokens but no cost makes the total unknown.
    """
    total = 0.0
    for response in responses:
        if response.cost_usd is None:
            if response.tokens_in or response.tokens_out or response.ok:
                return None
            continue
        total += response.cost_usd
    return total


class MemberFinished(msgspec.Struct, frozen=True, kw_only=True):
    """A member answered or failed; ``finished`` of ``total`` members are done."""

    response: PanelResponse
    finished: int
    total: int


class JudgeStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The judge (or a fallback judge) was called."""

    model: str
    position: int


class JudgeDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of the judge's streamed answer, as the upstream sent it."""

    chunk: ChatCompletionChunk


#: What a fusion reports while it runs (to a listener: the CLI's progress, the SSE relay).
FusionEvent = MemberFinished | JudgeStarted | JudgeDelta
