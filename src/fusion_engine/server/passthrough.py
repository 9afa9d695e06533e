"""Any model id that is not ``fusion/...`` goes to the passthrough provider, as sent (chat
completions, and embeddings through ``passthrough_post``).

Success bodies and stream events go back exactly as the provider sent them, except that a
usage-only chunk is dropped unless the client asked for ``stream_options.include_usage``. Errors
are normalised to OpenAI's shape by the error handlers, keeping the provider's ``type``, ``code``
and ``param`` and its message minus our key. The client's bearer key is never forwarded: the
provider's own key is used.

Bounds: a non-streamed reply is held whole (decoded to check it, then sent), so it may be at most
``PASSTHROUGH_MAX_BODY_BYTES``; a stream is relayed event by event and kept nowhere, so only each
event is bounded (the SSE decoder's 8 MiB), not the stream's total.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Any, TypeVar

import msgspec
from litestar import MediaType, Request, Response
from litestar.response import Stream

from .. import tracing
from ..chat_stream import AnswerApi, ChatAnswer, TokenUsage
from ..config import Provider
from ..errors import FusionError, NotFoundError, UpstreamTimeoutError
from ..protocol import ChatCompletion, Usage
from ..spend import CURRENT_TAB, Tab
from ..stream_events import StreamEvent
from ..tracing import TraceSpan
from .errors import error_payload, json_response
from .gateway import Gateway
from .observe import facts_of
from .runs import ClientGone, until_disconnect
from .schema import ChatRequest
from .streaming import DONE, SSE_HEADERS, AnswerFeed, failure_of, sse_data

T = TypeVar("T")
#: An unfused call has no panel budget; this matches the openai SDK's own default timeout.
PASSTHROUGH_TIMEOUT_S = 600.0
#: A non-streamed passthrough reply is held whole: larger than a fused member's 8 MiB because a
#: plain call may legitimately carry generated images (base64) or long reasoning, small enough
#: that a few at once cannot exhaust a worker.
PASSTHROUGH_MAX_BODY_BYTES = 32 * 1024 * 1024


def passthrough_provider(gateway: Gateway, model: str) -> Provider:
    """The provider non-fusion models go to.

    Raises:
        NotFoundError: passthrough is disabled, so the model is unknown here.
    """
    settings = gateway.config.gateway.passthrough
    if not settings.enabled:
        raise NotFoundError(
            f"the model {model!r} does not exist: only fusion/<panel> models are served here",
            param="model",
        )
    name = settings.provider or gateway.config.gateway.default_provider
    return gateway.config.providers[name]


async def passthrough(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    raw: dict[str, Any],
    chat: ChatRequest,
    api: AnswerApi | None = None,
) -> Response[Any]:
    """Relay the request to the passthrough provider's chat completions and its answer back:
    as the provider sent it, or, for a request translated from another API (Responses,
    Messages), rendered through ``api`` — so any OpenAI-compatible provider serves every API."""
    provider = passthrough_provider(gateway, chat.model)
    upstream = gateway.engine.upstream
    tab = CURRENT_TAB.get()
    span = tracing.chat(chat.model, provider.kind, raw, role="passthrough")
    if not chat.stream:
        with span:
            reply = await _cut_off_charged(
                tab, chat.model,
                until_disconnect(
                    request,
                    upstream.chat(
                        provider, raw, timeout_s=PASSTHROUGH_TIMEOUT_S,
                        max_body_bytes=PASSTHROUGH_MAX_BODY_BYTES,
                    ),
                ),
            )  # fmt: skip
            span.record_completion(reply.completion)
        facts_of(request).upstream_ms = reply.latency_ms
        _charge(gateway, tab, chat.model, reply.completion.usage)
        if api is None:
            return Response(content=reply.raw, media_type=MediaType.JSON)
        answer = _answer_of(reply.completion)
        await api.answered(answer)
        return json_response(api.reply(answer))
    # The provider's usage chunk is what the key is charged; the client sees it only if it
    # asked (``_relayed``), as it would from the provider.
    raw["stream_options"] = {**(raw.get("stream_options") or {}), "include_usage": True}
    batches = _charged(
        upstream.stream(provider, raw, timeout_s=PASSTHROUGH_TIMEOUT_S, max_total_bytes=None),
        gateway, tab, chat.model, span,
    )  # fmt: skip
    # The first events are awaited before answering, so a provider error before the stream
    # starts reaches the client as a proper status, not as an in-band event.
    try:
        with span.activate():  # the request goes out in the first step: its traceparent
            first = await until_disconnect(request, anext(batches))
    except StopAsyncIteration:
        first = None
    except BaseException as error:
        span.fail(error)
        span.end()
        await batches.aclose()
        raise
    if api is None:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        events = _relay(first, batches, include_usage=include_usage)
    else:
        events = _translated(first, batches, AnswerFeed(api.renderer()), api)
    return Stream(span.follow(events), media_type="text/event-stream", headers=SSE_HEADERS)


def _charge(gateway: Gateway, tab: Tab | None, model: str, usage: Usage | None) -> None:
    """Charge a passthrough call to the request's tab by the usage its provider reported (and
    learn the model's price from it, for the next estimate)."""
    if usage is None:
        # A provider that reports no usage still read the prompt and answered: charged the
        # prompt at least (estimated), as a stream without its usage chunk is, never free.
        if tab is not None:
            tab.add_usage(model, 0, 0, None, cut_off=True)
        return
    tokens_in, tokens_out = usage.prompt_tokens, usage.completion_tokens
    gateway.prices.learn_usage(model, tokens_in, tokens_out, usage.cost)
    if tab is not None:
        tab.add_usage(model, tokens_in, tokens_out, usage.cost)


async def _charged(
    batches: AsyncGenerator[list[StreamEvent], None],
    gateway: Gateway,
    tab: Tab | None,
    model: str,
    span: TraceSpan,
) -> AsyncGenerator[list[StreamEvent], None]:
    """``batches`` as they come; the stream's usage is charged to ``tab`` when it ends, however
    it ends (a stream cut off after it began, before its usage chunk, is charged its prompt,
    estimated; one the provider refused before it began costs nothing)."""
    usage: Usage | None = None
    began = False
    try:
        async with aclosing(batches):
            async for events in batches:
                began = True
                for event in events:
                    if event.chunk.usage is not None:
                        usage = event.chunk.usage
                yield events
    except (asyncio.CancelledError, GeneratorExit):
        began = True  # cut off in flight (the client left before the first event): as began
        raise
    finally:
        if usage is not None:
            _charge(gateway, tab, model, usage)
            span.record_usage(usage)
        elif began and tab is not None:
            tab.add_usage(model, 0, 0, None, cut_off=True)


async def _cut_off_charged(tab: Tab | None, model: str, call: Awaitable[T]) -> T:
    """``call``'s result; a call cut off in flight (the client left, or it timed out) is
    charged its prompt, estimated: the provider read it, and may bill it, answered or not."""
    try:
        return await call
    except (asyncio.CancelledError, ClientGone, UpstreamTimeoutError):
        if tab is not None:
            tab.add_usage(model, 0, 0, None, cut_off=True)
        raise


def _answer_of(completion: ChatCompletion) -> ChatAnswer:
    """A provider's ``chat.completion`` as an API-neutral answer."""
    choice = completion.choices[0] if completion.choices else None
    message = choice.message if choice is not None else None
    usage = completion.usage
    return ChatAnswer(
        text=message.content if message is not None else None,
        tool_calls=list(message.tool_calls or ()) if message is not None else [],
        finish_reason=choice.finish_reason if choice is not None else None,
        usage=None if usage is None else TokenUsage(
            input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
            cost_usd=usage.cost,
        ),
    )  # fmt: skip


async def _translated(
    first: list[StreamEvent] | None,
    batches: AsyncGenerator[list[StreamEvent], None],
    feed: AnswerFeed,
    api: AnswerApi,
) -> AsyncIterator[bytes]:
    """The provider's chunks rendered through ``feed``'s renderer."""
    renderer = feed.renderer
    async with aclosing(batches):
        try:
            pending = renderer.open()
            if first is not None:
                pending += b"".join(feed.chunk(event.chunk, final_parts=True) for event in first)
            if pending:
                yield pending
            async for events in batches:
                if text := b"".join(feed.chunk(event.chunk, final_parts=True) for event in events):
                    yield text
        except FusionError as error:
            yield renderer.fail(failure_of(error))
            return
    await api.answered(feed.answer())
    yield renderer.close()


async def passthrough_post(
    request: Request[Any, Any, Any], gateway: Gateway, path: str, raw: dict[str, Any], model: str
) -> Response[Any]:
    """Relay a non-streamed request other than chat (``/embeddings``) to the passthrough
    provider, under the same bounds, and its JSON answer back as the provider sent it."""
    provider = passthrough_provider(gateway, model)
    reply = await _cut_off_charged(
        CURRENT_TAB.get(), model,
        until_disconnect(
            request,
            gateway.engine.upstream.post(
                provider, path, raw, timeout_s=PASSTHROUGH_TIMEOUT_S,
                max_body_bytes=PASSTHROUGH_MAX_BODY_BYTES,
            ),
        ),
    )  # fmt: skip
    try:
        usage = _decode_usage(reply).usage
    except msgspec.DecodeError:  # relayed as it came; only its charge is unknown
        usage = None
    _charge(gateway, CURRENT_TAB.get(), model, usage)
    return Response(content=reply, media_type=MediaType.JSON)


class _UsageOnly(msgspec.Struct):
    """The part of a provider's JSON reply that is charged."""

    usage: Usage | None = None


_decode_usage = msgspec.json.Decoder(_UsageOnly).decode


async def _relay(
    first: list[StreamEvent] | None,
    batches: AsyncGenerator[list[StreamEvent], None],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The provider's events, each batch (what one network read brought) in one write."""
    async with aclosing(batches):
        try:
            if first is not None and (text := _relayed(first, include_usage)):
                yield text
            async for events in batches:
                if text := _relayed(events, include_usage):
                    yield text
        except FusionError as error:
            yield sse_data(error_payload(error))
            return
    yield DONE


def _relayed(events: list[StreamEvent], include_usage: bool) -> bytes:
    """The SSE text of ``events``, minus a usage-only chunk the client did not ask for."""
    return b"".join(
        b"data: " + event.data + b"\n\n"
        for event in events
        if include_usage or event.chunk.choices or event.chunk.usage is None
    )
