"""Streamed fused replies: SSE ``chat.completion.chunk``s relayed from the judge as they arrive.

The status line is held back while the panel works, up to one keep-alive interval: a panel that
fails outright in that time gets a proper 502/504 JSON error. After that, comment lines keep the
connection alive and a later error is sent in-band as ``data: {"error": ...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from ..cache import CacheResult, CacheTicket
from ..plan import FusionPlan
from ..protocol import ChatCompletionChunk
from ..ratelimit import Lease
from ..results import FusionResult, JudgeDelta, MemberFinished
from .errors import error_payload, error_response
from .gateway import Gateway
from .observe import RequestFacts, facts_of, record_result
from .runs import Failed, Finished, FusionRun, RunItem, until_disconnect
from .schema import (
    ChunkChoiceOut,
    ChunkOut,
    DeltaOut,
    Detail,
    FunctionDeltaOut,
    ToolCallDeltaOut,
    fused_headers,
    fusion_detail,
    usage_of,
)

_encode = msgspec.json.Encoder().encode
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def sse_data(payload: Any) -> bytes:
    """One SSE data event."""
    return b"data: " + _encode(payload) + b"\n\n"


class ChunkWriter:
    """Turns the judge's chunks (or a finished result) into our chunks, one id for the stream.

    The first chunk carries ``role``; a tool call's ``id``, ``type`` and ``name`` go out only in
    its first fragment (openai's stream helpers concatenate repeats).
    """

    def __init__(self, *, completion_id: str, created: int, model: str) -> None:
        self._id, self._created, self._model = completion_id, created, model
        self._role_sent = False
        self._calls_started: set[int] = set()
        self.relayed_any = False

    def chunk(self, delta: DeltaOut, finish_reason: str | None = None, **extra: Any) -> ChunkOut:
        """A chunk of this stream."""
        if not self._role_sent and finish_reason is None:
            delta = msgspec.structs.replace(delta, role="assistant")
            self._role_sent = True
        choice = ChunkChoiceOut(delta=delta, finish_reason=finish_reason)
        return ChunkOut(
            id=self._id, created=self._created, model=self._model, choices=[choice], **extra
        )

    def from_judge(self, upstream: ChatCompletionChunk) -> Iterator[ChunkOut]:
        """Our chunks for one judge chunk (finish reasons are held for the final chunk)."""
        for choice in upstream.choices:
            delta = choice.delta
            calls = [self._call_fragment(f.index, f.id, f.function) for f in delta.tool_calls or ()]
            if delta.content or calls:
                self.relayed_any = True
                yield self.chunk(DeltaOut(content=delta.content or None, tool_calls=calls or None))

    def _call_fragment(self, index: int, call_id: str | None, function: Any) -> ToolCallDeltaOut:
        name = function.name if function is not None else None
        arguments = (function.arguments if function is not None else None) or ""
        if index in self._calls_started:
            return ToolCallDeltaOut(index=index, function=FunctionDeltaOut(arguments=arguments))
        self._calls_started.add(index)
        return ToolCallDeltaOut(
            index=index,
            id=call_id or f"call_{index}",
            type="function",
            function=FunctionDeltaOut(arguments=arguments, name=name or ""),
        )

    def whole_answer(self, result: FusionResult) -> Iterator[ChunkOut]:
        """The answer in one piece, when nothing was relayed (judge skipped or replaced)."""
        calls = [
            ToolCallDeltaOut(
                index=position,
                id=call.id,
                type="function",
                function=FunctionDeltaOut(call.function.arguments, name=call.function.name),
            )
            for position, call in enumerate(result.tool_calls or ())
        ]
        if result.answer or calls:
            yield self.chunk(DeltaOut(content=result.answer, tool_calls=calls or None))

    def finish(self, result: FusionResult, detail: Detail) -> ChunkOut:
        """The chunk carrying ``finish_reason`` and the ``fusion`` object."""
        return self.chunk(
            DeltaOut(), finish_reason=result.finish_reason, fusion=fusion_detail(result, detail)
        )

    def usage(self, result: FusionResult) -> ChunkOut:
        """The usage-only chunk (empty ``choices``) sent when the client asked for usage."""
        return ChunkOut(
            id=self._id, created=self._created, model=self._model, choices=[],
            usage=usage_of(result),
        )  # fmt: skip


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a streamed fused reply looks like: one id and model, usage and detail wanted."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    detail: Detail
    cache_control: str | None
    #: Whose cache entries these are (``cache.scope_for``).
    cache_scope: str

    def writer(self) -> ChunkWriter:
        """A chunk writer for this stream."""
        return ChunkWriter(completion_id=self.completion_id, created=self.created, model=self.model)


async def fused_stream(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    plan: FusionPlan,
    spec: StreamSpec,
    *,
    slot: Lease,
) -> Response[Any]:
    """Answer with an SSE stream: replayed from the cache, or live from a new fusion (or a
    JSON error if the fusion fails within the hold interval).

    ``slot`` (the caller's concurrent-fusion slot) is handed to the live fusion, which gives
    it back when it ends, fails or is cancelled because the client left; it is given back
    here when no fusion runs.
    """
    facts = facts_of(request)
    ticket, run = await start_fusion(
        request, gateway, plan, slot=slot, cache_control=spec.cache_control,
        scope=spec.cache_scope,
    )  # fmt: skip
    writer = spec.writer()
    include_usage, detail = spec.include_usage, spec.detail
    headers = {**SSE_HEADERS, **fused_headers(ticket.result, ticket.outcome)}
    if run is None:
        assert ticket.result is not None  # start_fusion: no run means a hit
        replay = b"".join(
            _render(Finished(ticket.result), writer, include_usage=include_usage, detail=detail)
        )
        return Stream(_once(replay), media_type="text/event-stream", headers=headers)
    keepalive_s = gateway.settings.keepalive_s
    try:
        held = await until_disconnect(request, _hold(run, keepalive_s))
    except BaseException:
        await run.cancel()
        raise
    if held and isinstance(held[-1], Failed):
        return error_response(held[-1].error)
    finished = next((item for item in held if isinstance(item, Finished)), None)
    if finished is not None:
        headers.update(fused_headers(finished.result, ticket.outcome))
    events = _events(
        run, held, writer, keepalive_s,
        include_usage=include_usage, detail=detail, facts=facts, outcome=ticket.outcome,
    )  # fmt: skip
    return Stream(events, media_type="text/event-stream", headers=headers)


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
    writer: ChunkWriter,
    keepalive_s: float,
    *,
    include_usage: bool,
    detail: Detail,
    facts: RequestFacts,
    outcome: CacheResult,
) -> AsyncIterator[bytes]:
    """The SSE body; cancelling it (client gone) cancels the fusion."""
    burst = held
    try:
        while True:
            if not burst:
                yield KEEPALIVE
            parts: list[bytes] = []
            for item in burst:
                if isinstance(item, Finished):
                    record_result(facts, item.result, outcome)
                parts.extend(_render(item, writer, include_usage=include_usage, detail=detail))
            if parts:
                yield b"".join(parts)
            if burst and isinstance(burst[-1], Finished | Failed):
                return
            burst = await run.next_burst(keepalive_s)
    finally:
        await run.cancel()


def _render(
    item: RunItem, writer: ChunkWriter, *, include_usage: bool, detail: Detail
) -> Iterator[bytes]:
    if isinstance(item, MemberFinished):
        yield f": fusion {item.finished}/{item.total}\n\n".encode()
    elif isinstance(item, JudgeDelta):
        for chunk in writer.from_judge(item.chunk):
            yield sse_data(chunk)
    elif isinstance(item, Finished):
        result = item.result
        if not writer.relayed_any:
            for chunk in writer.whole_answer(result):
                yield sse_data(chunk)
        yield sse_data(writer.finish(result, detail))
        if include_usage:
            yield sse_data(writer.usage(result))
        yield DONE
    elif isinstance(item, Failed):
        yield sse_data(error_payload(item.error))
