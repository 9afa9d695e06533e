"""Streamed answers: the judge's deltas (or a provider's chunks) rendered as an API's SSE stream
as they arrive, through a ``StreamRenderer`` (``ChatRenderer`` here for chat completions; the
Responses and Messages translations bring their own).

The status line of a fused stream is held back while the panel works, up to one keep-alive
interval: a panel that fails outright in that time gets a proper error status. After that, the
renderer's keep-alives keep the connection busy and a later error is sent in-band.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from ..cache import CacheResult, CacheTicket
from ..chat_stream import ChatAnswer, StreamFailure, StreamRenderer, TokenUsage
from ..errors import FusionError
from ..plan import FusionPlan
from ..protocol import ChatCompletionChunk, FunctionCall, ToolCall
from ..ratelimit import Lease
from ..results import FusionResult, JudgeDelta, MemberFinished
from .errors import error_payload, status_of
from .gateway import Gateway
from .observe import RequestFacts, facts_of, record_result, trace_fusion
from .runs import Failed, Finished, FusionRun, RunItem, until_disconnect
from .schema import (
    ChunkChoiceOut,
    ChunkOut,
    DeltaOut,
    Detail,
    ErrorBody,
    ErrorDetail,
    FunctionDeltaOut,
    ToolCallDeltaOut,
    UsageOut,
    fused_headers,
    fusion_detail,
)

_encode = msgspec.json.Encoder().encode
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
#: Called with the whole answer of a successful stream before its closing events go out (so a
#: stored Responses answer exists by the time the client can name it).
OnAnswer = Callable[[ChatAnswer], Awaitable[None]]


def sse_data(payload: Any) -> bytes:
    """One SSE data event."""
    return b"data: " + _encode(payload) + b"\n\n"


def failure_of(error: FusionError) -> StreamFailure:
    """How a stream that already started reports ``error``."""
    detail = error_payload(error).error
    return StreamFailure(
        status=status_of(error), message=detail.message, type=detail.type, code=detail.code,
        param=detail.param,
    )  # fmt: skip


def token_usage(result: FusionResult) -> TokenUsage:
    """Token and cost totals of a fusion."""
    return TokenUsage(
        input_tokens=result.tokens_in, output_tokens=result.tokens_out, cost_usd=result.total_cost
    )


def answer_of(result: FusionResult, detail: Detail) -> ChatAnswer:
    """A fusion's result as an API-neutral answer."""
    return ChatAnswer(
        text=result.answer,
        tool_calls=list(result.tool_calls or ()),
        finish_reason=result.finish_reason,
        usage=token_usage(result),
        fusion=fusion_detail(result, detail),
    )


def usage_out(usage: TokenUsage) -> UsageOut:
    """Chat completions' ``usage`` object."""
    return UsageOut(
        prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens, cost=usage.cost_usd,
    )  # fmt: skip


class ChatRenderer:
    """``chat.completion.chunk``s, one id for the stream (a ``StreamRenderer``).

    The first chunk carries ``role``; a tool call's ``id``, ``type`` and ``name`` go out only in
    its first fragment (openai's stream helpers concatenate repeats).
    """

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._id, self._created, self._model = completion_id, created, model
        self._include_usage = include_usage
        self._role_sent = False
        self._calls_started: set[int] = set()

    def _chunk(self, delta: DeltaOut, finish_reason: str | None = None, **extra: Any) -> bytes:
        if not self._role_sent and finish_reason is None:
            delta = msgspec.structs.replace(delta, role="assistant")
            self._role_sent = True
        choice = ChunkChoiceOut(delta=delta, finish_reason=finish_reason)
        chunk = ChunkOut(
            id=self._id, created=self._created, model=self._model, choices=[choice], **extra
        )
        return sse_data(chunk)

    def open(self) -> bytes:
        return b""

    def progress(self, finished: int, total: int) -> bytes:
        return f": fusion {finished}/{total}\n\n".encode()

    def keepalive(self) -> bytes:
        return KEEPALIVE

    def text(self, delta: str) -> bytes:
        return self._chunk(DeltaOut(content=delta))

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        if index in self._calls_started:
            fragment = ToolCallDeltaOut(index=index, function=FunctionDeltaOut(arguments=arguments))
        else:
            self._calls_started.add(index)
            fragment = ToolCallDeltaOut(
                index=index, id=call_id or f"call_{index}", type="function",
                function=FunctionDeltaOut(arguments=arguments, name=name or ""),
            )  # fmt: skip
        return self._chunk(DeltaOut(tool_calls=[fragment]))

    def finish(self, finish_reason: str | None, fusion: Any = None) -> bytes:
        extra = {} if fusion is None else {"fusion": fusion}
        return self._chunk(DeltaOut(), finish_reason=finish_reason or "stop", **extra)

    def usage(self, usage: TokenUsage) -> bytes:
        if not self._include_usage:
            return b""
        return sse_data(
            ChunkOut(
                id=self._id, created=self._created, model=self._model, choices=[],
                usage=usage_out(usage),
            )
        )  # fmt: skip

    def close(self) -> bytes:
        return DONE

    def fail(self, failure: StreamFailure) -> bytes:
        return sse_data(
            ErrorBody(ErrorDetail(failure.message, failure.type, failure.param, failure.code))
        )


class AnswerFeed:
    """Feeds one renderer the parts of an answer and remembers them: whether anything was
    relayed yet, and the whole answer a stream told (for ``OnAnswer``)."""

    def __init__(self, renderer: StreamRenderer) -> None:
        self.renderer = renderer
        self.relayed_any = False
        self._text: list[str] = []
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self._finish_reason: str | None = None
        self._usage: TokenUsage | None = None
        self._fusion: Any = None

    def chunk(self, chunk: ChatCompletionChunk, *, final_parts: bool) -> bytes:
        """A chat chunk's text and tool-call fragments; with ``final_parts`` (a provider's
        own stream) also its finish reason and usage."""
        parts: list[bytes] = []
        renderer = self.renderer
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                parts.append(self.text(delta.content))
            for fragment in delta.tool_calls or ():
                function = fragment.function
                parts.append(
                    self.tool_call(
                        fragment.index, fragment.id,
                        function.name if function is not None else None,
                        (function.arguments if function is not None else None) or "",
                    )
                )  # fmt: skip
            if final_parts and choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
                parts.append(renderer.finish(choice.finish_reason))
        if final_parts and chunk.usage is not None:
            usage = chunk.usage
            self._usage = TokenUsage(
                input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                cost_usd=usage.cost,
            )  # fmt: skip
            parts.append(renderer.usage(self._usage))
        return b"".join(parts)

    def text(self, delta: str) -> bytes:
        """A piece of text."""
        self.relayed_any = True
        self._text.append(delta)
        return self.renderer.text(delta)

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """A piece of a tool call."""
        self.relayed_any = True
        if index not in self._calls:
            # A call the provider gave no id gets one here, so the renderer and the whole
            # answer (what the Responses API stores) name it alike; unique, as a
            # conversation's calls must be.
            call_id = call_id or f"call_{secrets.token_hex(12)}"
            self._calls[index] = [call_id, name or ""]
        self._calls[index].append(arguments)
        return self.renderer.tool_call(index, call_id, name, arguments)

    def whole(self, answer: ChatAnswer) -> bytes:
        """A whole answer's text and tool calls at once (a cache hit, a member standing in)."""
        parts = [self.text(answer.text)] if answer.text else []
        for index, call in enumerate(answer.tool_calls):
            parts.append(
                self.tool_call(index, call.id, call.function.name, call.function.arguments)
            )
        return b"".join(parts)

    def end(self, answer: ChatAnswer) -> bytes:
        """The finish reason, fusion detail and usage of a fused answer."""
        self._finish_reason, self._usage, self._fusion = (
            answer.finish_reason, answer.usage, answer.fusion,
        )  # fmt: skip
        parts = [self.renderer.finish(answer.finish_reason, answer.fusion)]
        if answer.usage is not None:
            parts.append(self.renderer.usage(answer.usage))
        return b"".join(parts)

    def answer(self) -> ChatAnswer:
        """What the stream told, as one answer."""
        calls = [
            ToolCall(id=call[0], function=FunctionCall(name=call[1], arguments="".join(call[2:])))
            for _, call in sorted(self._calls.items())
        ]
        return ChatAnswer(
            text="".join(self._text) if self._text else None, tool_calls=calls,
            finish_reason=self._finish_reason, usage=self._usage, fusion=self._fusion,
        )  # fmt: skip


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a streamed fused reply is made: detail wanted, cache policy and scope."""

    detail: Detail
    cache_control: str | None
    #: Whose cache entries these are (``cache.scope_for``).
    cache_scope: str


async def fused_stream(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    plan: FusionPlan,
    spec: StreamSpec,
    *,
    slot: Lease,
    renderer: StreamRenderer,
    on_answer: OnAnswer | None = None,
) -> Response[Any]:
    """Answer with an SSE stream: replayed from the cache, or live from a new fusion (or an
    error status if the fusion fails within the hold interval).

    ``slot`` (the caller's concurrent-fusion slot) is handed to the live fusion, which gives
    it back when it ends, fails or is cancelled because the client left; it is given back
    here when no fusion runs. The request's fusion span ends with the stream.

    Raises:
        FusionError: the fusion failed before the stream started.
    """
    span = trace_fusion(request, plan.panel.name)
    try:
        with span.activate():  # the fusion's task starts in it, so its calls are its children
            return await _fused_stream(
                request, gateway, plan, spec, slot=slot, renderer=renderer, on_answer=on_answer
            )
    except BaseException as error:
        span.fail(error)
        span.end()
        raise


async def _fused_stream(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    plan: FusionPlan,
    spec: StreamSpec,
    *,
    slot: Lease,
    renderer: StreamRenderer,
    on_answer: OnAnswer | None,
) -> Response[Any]:
    facts = facts_of(request)
    ticket, run = await start_fusion(
        request, gateway, plan, slot=slot, cache_control=spec.cache_control,
        scope=spec.cache_scope,
    )  # fmt: skip
    feed = AnswerFeed(renderer)
    headers = {**SSE_HEADERS, **fused_headers(ticket.result, ticket.outcome)}
    if run is None:
        assert ticket.result is not None  # start_fusion: no run means a hit
        answer = answer_of(ticket.result, spec.detail)
        replay = renderer.open() + feed.whole(answer) + feed.end(answer)
        if on_answer is not None:
            await on_answer(feed.answer())
        return Stream(
            facts.fusion_span.follow(_once(replay + renderer.close())),
            media_type="text/event-stream", headers=headers,
        )  # fmt: skip
    keepalive_s = gateway.settings.keepalive_s
    try:
        held = await until_disconnect(request, _hold(run, keepalive_s))
    except BaseException:
        await run.cancel()
        raise
    if held and isinstance(held[-1], Failed):
        raise held[-1].error
    finished = next((item for item in held if isinstance(item, Finished)), None)
    if finished is not None:
        headers.update(fused_headers(finished.result, ticket.outcome))
    events = _events(
        run, held, feed, keepalive_s,
        detail=spec.detail, facts=facts, outcome=ticket.outcome, on_answer=on_answer,
    )  # fmt: skip
    return Stream(facts.fusion_span.follow(events), media_type="text/event-stream", headers=headers)


async def start_fusion(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    plan: FusionPlan,
    *,
    slot: Lease,
    cache_control: str | None,
    scope: str,
) -> tuple[CacheTicket, FusionRun | None]:
    """The start every streamed fused reply shares: look ``plan`` up in the cache and, on a
    miss, start the fusion, which then owns ``slot`` (the caller's concurrent-fusion slot) and
    gives it back when it ends, fails or is cancelled. On a hit there is no run: the slot is
    given back here and the cached result is recorded for the request's log line.
    """
    facts = facts_of(request)
    try:
        ticket = await until_disconnect(
            request, gateway.cache.begin(plan, cache_control, scope=scope)
        )
    except BaseException:
        await slot.release()
        raise
    facts.cache = ticket.outcome
    if ticket.result is not None:
        await slot.release()
        record_result(facts, ticket.result, ticket.outcome)
        return ticket, None
    run = FusionRun(
        gateway.engine, plan, stream_judge=True, cache=gateway.cache, ticket=ticket, slot=slot
    )
    return ticket, run


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _hold(run: FusionRun, keepalive_s: float) -> list[RunItem]:
    """Collect items until the judge starts talking, the run ends, or the interval passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + keepalive_s
    held: list[RunItem] = []
    while (remaining := deadline - loop.time()) > 0:
        item = await run.next_item(remaining)
        if item is None:
            break
        held.append(item)
        if isinstance(item, JudgeDelta | Finished | Failed):
            break
    return held


async def _events(
    run: FusionRun,
    held: list[RunItem],
    feed: AnswerFeed,
    keepalive_s: float,
    *,
    detail: Detail,
    facts: RequestFacts,
    outcome: CacheResult,
    on_answer: OnAnswer | None,
) -> AsyncIterator[bytes]:
    """The SSE body; cancelling it (client gone) cancels the fusion."""
    renderer = feed.renderer
    burst = held
    pending = renderer.open()
    try:
        while True:
            if not burst:
                pending += renderer.keepalive()
            parts: list[bytes] = [pending]
            pending = b""
            for item in burst:
                if isinstance(item, MemberFinished):
                    parts.append(renderer.progress(item.finished, item.total))
                elif isinstance(item, JudgeDelta):
                    parts.append(feed.chunk(item.chunk, final_parts=False))
                elif isinstance(item, Finished):
                    record_result(facts, item.result, outcome)
                    answer = answer_of(item.result, detail)
                    if not feed.relayed_any:
                        parts.append(feed.whole(answer))
                    parts.append(feed.end(answer))
                    if on_answer is not None:
                        await on_answer(feed.answer())
                    parts.append(renderer.close())
                elif isinstance(item, Failed):
                    parts.append(renderer.fail(failure_of(item.error)))
            if text := b"".join(parts):
                yield text
            if burst and isinstance(burst[-1], Finished | Failed):
                return
            burst = await run.next_burst(keepalive_s)
    finally:
        await run.cancel()
