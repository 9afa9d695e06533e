"""An upstream call's outcome as a ``PanelResponse``: the answer with its tokens, cost and
latency, or the reason it failed. Members, judges and the eval baselines all record calls
this way.
"""

from __future__ import annotations

from .errors import UpstreamError
from .protocol import ChatCompletion
from .results import PanelResponse
from .upstream import UpstreamReply


def response_from_reply(index: int, model: str, reply: UpstreamReply) -> PanelResponse:
    """A successful call as a PanelResponse; no text and no tool calls counts as an error."""
    completion: ChatCompletion = reply.completion
    choice = completion.choices[0]
    usage = completion.usage
    message = choice.message
    empty = not (message.content and message.content.strip()) and not message.tool_calls
    return PanelResponse(
        index=index,
        model=model,
        content=message.content,
        tool_calls=message.tool_calls or None,
        reasoning=message.reasoning,
        finish_reason=choice.finish_reason,
        tokens_in=usage.prompt_tokens if usage else 0,
        tokens_out=usage.completion_tokens if usage else 0,
        latency_ms=reply.latency_ms,
        queue_ms=reply.queue_ms,
        cost_usd=usage.cost if usage else None,
        error="empty answer" if empty else None,
        error_kind="empty" if empty else None,
        attempts=reply.attempts,
    )


def failed_response(
    index: int, model: str, error: UpstreamError, latency_ms: float
) -> PanelResponse:
    """A failed call as a PanelResponse carrying the reason."""
    kind = error.kind if error.kind in _KNOWN_KINDS else "http_error"
    return PanelResponse(
        index=index,
        model=model,
        error=error.message,
        error_kind=kind,  # type: ignore[arg-type]  # narrowed by _KNOWN_KINDS
        latency_ms=latency_ms,
        attempts=error.attempts,
        provider_error=error.provider_error,
    )


_KNOWN_KINDS = frozenset(
    {"timeout", "rate_limited", "http_error", "connection", "invalid_response"}
)
