"""The gateway's request and response bodies, as msgspec structs.

Requests are decoded twice from one parse: into a raw ``dict`` (every field the client sent, to be
forwarded) and into a typed struct (what the gateway itself reads). Responses follow OpenAI's
Chat Completions shapes, plus the ``fusion`` object described in the README; ``UNSET`` fields are
left out of the JSON.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ..cache import CacheResult
from ..errors import InvalidRequestError
from ..protocol import GenerationFields, PositiveInt, ToolCall
from ..results import Agreement, FusionResult, PanelResponse, ToolVote

Detail = Literal["full", "none"]


class FusionOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The optional ``fusion`` object of a chat request (the openai SDK's ``extra_body``)."""

    web_search: bool | None = None
    detail: Detail = "full"
    models: list[str | dict[str, Any]] | None = None
    judge_model: str | None = None
    judge_template: str | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    """``stream_options``; unknown keys (``include_obfuscation``...) are ignored."""

    include_usage: bool = False


class ChatRequest(GenerationFields, frozen=True, kw_only=True):
    """The fields of ``POST /v1/chat/completions`` the gateway reads; others travel in ``extra``."""

    model: str
    messages: list[Any]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: PositiveInt | None = None
    fusion: FusionOptions | None = None
    #: Read to refuse them on fused models (see ``check_fused_request``); a passthrough
    #: forwards the body as sent.
    logprobs: bool | None = None
    top_logprobs: int | None = None


#: Field names ChatRequest reads; everything else in a request body is forwarded untouched.
CHAT_REQUEST_FIELDS = frozenset(ChatRequest.__struct_fields__)


def check_fused_request(chat: ChatRequest) -> None:
    """Refuse what a fused model cannot honour (400 naming the field).

    ``n > 1``: a fusion makes one answer. ``logprobs`` / ``top_logprobs``: the fused answer is
    the judge's rewrite, or a member's answer standing in, or a consensus that skipped the judge,
    or a cached reply, so no one call's log-probabilities describe its tokens; relaying the
    judge's only sometimes (and silently dropping them otherwise) would mislead, so they are
    refused outright.

    Raises:
        InvalidRequestError: with ``param`` naming the field.
    """
    if chat.n is not None and chat.n > 1:
        raise InvalidRequestError("fused completions return one choice: n must be 1", param="n")
    if chat.logprobs:
        raise InvalidRequestError(
            "fused models cannot return logprobs: the answer is fused from several calls, "
            "so no single call's token probabilities describe it",
            param="logprobs",
        )
    if chat.top_logprobs:
        raise InvalidRequestError(
            "fused models cannot return top_logprobs (see logprobs)", param="top_logprobs"
        )


class FuseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /fuse``: a prompt or messages, and a panel or models."""

    prompt: str | None = None
    messages: list[Any] | None = None
    panel: str | None = None
    models: list[str | dict[str, Any]] | None = None
    judge_model: str | None = None
    judge_template: str | None = None
    web_search: bool | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class ErrorDetail(msgspec.Struct, frozen=True):
    """OpenAI's error object: all four keys always present."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, frozen=True):
    """``{"error": {...}}``."""

    error: ErrorDetail


class AssistantMessage(msgspec.Struct, frozen=True):
    """The fused reply's message; ``content`` and ``refusal`` are always present (maybe null)."""

    content: str | None
    role: str = "assistant"
    refusal: None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET


class CompletionChoice(msgspec.Struct, frozen=True):
    """The one choice of a fused reply."""

    message: AssistantMessage
    finish_reason: str
    index: int = 0
    logprobs: None = None


class UsageOut(msgspec.Struct, frozen=True):
    """``usage``: totals over every call of the fusion, with ``cost`` (null when unknown)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | None


class FusionDetail(msgspec.Struct, frozen=True, kw_only=True):
    """The extra top-level ``fusion`` field: the same data as the library's FusionResult."""

    panel: str | None
    members: list[PanelResponse]
    judge: PanelResponse | JudgeSkipped | None
    judge_attempts: list[PanelResponse]
    total_cost: float | None
    total_latency_ms: float
    degraded: str | None
    cached: bool
    dropped_members: list[str]
    agreement: Agreement | None
    tool_votes: list[ToolVote]


class JudgeSkipped(msgspec.Struct, frozen=True):
    """``fusion.judge`` when no judge was asked: why (``consensus`` or ``single``)."""

    skipped: str


class ChatCompletionOut(msgspec.Struct, frozen=True, kw_only=True):
    """A non-streaming fused ``chat.completion``."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut
    fusion: FusionDetail
    object: str = "chat.completion"
    system_fingerprint: None = None


class FusionDetailSchema(FusionDetail, frozen=True, kw_only=True):
    """FusionDetail for the OpenAPI document only: msgspec writes ``judge`` as a PanelResponse, a
    JudgeSkipped or null, but cannot describe an untagged union of two structs, so the schema is
    made from this and ``server/openapi.py`` puts JudgeSkipped back into ``judge``'s ``anyOf``."""

    judge: PanelResponse | None


class ChatCompletionSchema(ChatCompletionOut, frozen=True, kw_only=True):
    """ChatCompletionOut for the OpenAPI document only (see FusionDetailSchema)."""

    fusion: FusionDetailSchema


class FunctionDeltaOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """A tool call's function fragment; the name only in the first fragment."""

    arguments: str = ""
    name: str | None = None


class ToolCallDeltaOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """A tool-call fragment; ``id`` and ``type`` only in the first fragment of a call."""

    index: int
    function: FunctionDeltaOut
    id: str | None = None
    type: str | None = None


class DeltaOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a chunk adds to the message."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChunkChoiceOut(msgspec.Struct, frozen=True):
    """The one choice of a fused chunk."""

    delta: DeltaOut
    finish_reason: str | None = None
    index: int = 0
    logprobs: None = None


class ChunkOut(msgspec.Struct, frozen=True, kw_only=True):
    """A fused ``chat.completion.chunk``; ``fusion`` rides on the finishing chunk."""

    id: str
    created: int
    model: str
    choices: list[ChunkChoiceOut]
    object: str = "chat.completion.chunk"
    usage: UsageOut | UnsetType = UNSET
    fusion: FusionDetail | UnsetType = UNSET


def fusion_detail(result: FusionResult, detail: Detail) -> FusionDetail:
    """The ``fusion`` field; ``detail="none"`` drops what members and judges wrote."""
    members, judge, attempts = result.panel_responses, result.judge_response, result.judge_attempts
    if detail == "none":
        members = [_without_text(member) for member in members]
        attempts = [_without_text(attempt) for attempt in attempts]
        judge = _without_text(judge) if judge is not None else None
    return FusionDetail(
        panel=result.panel,
        members=members,
        judge=JudgeSkipped(result.judge_skipped) if result.judge_skipped else judge,
        judge_attempts=attempts,
        total_cost=result.total_cost,
        total_latency_ms=result.total_latency_ms,
        degraded=result.degraded,
        cached=result.cached,
        dropped_members=result.dropped_members,
        agreement=result.agreement,
        tool_votes=result.tool_votes,
    )


def _without_text(response: PanelResponse) -> PanelResponse:
    return msgspec.structs.replace(response, content=None, tool_calls=None, reasoning=None)


def fused_headers(result: FusionResult | None, outcome: CacheResult) -> dict[str, str]:
    """``X-Fusion-Cache``, and ``X-Fusion-Degraded`` when a member answer stood in."""
    headers: dict[str, str] = {"X-Fusion-Cache": outcome}
    if result is not None and result.degraded:
        headers["X-Fusion-Degraded"] = result.degraded
    return headers
