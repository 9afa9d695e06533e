"""The OpenTelemetry side of ``tracing``: the SDK's tracer with a batching OTLP/HTTP exporter.

Imported by ``tracing.start`` only when tracing is on (it needs the ``otel`` extra). The exporter
reads the standard ``OTEL_EXPORTER_OTLP_*`` variables, the batch processor ``OTEL_BSP_*``, the
sampler ``OTEL_TRACES_SAMPLER``; ``OTEL_SERVICE_NAME`` defaults to ``fusion-engine``.

Attributes follow the GenAI semantic conventions (``gen_ai.*``) plus our own ``fusion.*``.
Prompts and answers are recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
set to ``true``, as ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .tracing import Role, TraceSpan, captures_content, is_cancellation

if TYPE_CHECKING:
    from typing import Self

    from .protocol import ChatCompletion, Usage
    from .results import FusionResult, PanelResponse

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_encode = msgspec.json.Encoder().encode
#: A client that left before its answer (nginx's "client closed request", as the server logs it).
_CLIENT_CLOSED = 499


class OtelTracing:
    """Starts spans on one tracer provider; ``shutdown`` flushes them."""

    def __init__(self, provider: TracerProvider, *, capture_content: bool) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("fusion_engine", __version__)
        self.capture_content = capture_content

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> OtelTracing:
        """A tracer exporting in batches over OTLP/HTTP, configured by ``environ``."""
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself; a name
        # given here would override them, so it is only the default.
        default = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "fusion-engine"}
        provider = TracerProvider(resource=Resource.create(default))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, capture_content=captures_content(environ))

    def shutdown(self) -> None:
        self._provider.shutdown()

    def server(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> TraceSpan:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in _TRACE_HEADERS
        }
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        # Named for the method until the route is known (record_http), as HTTP semconv says.
        span = self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )  # fmt: skip
        return OtelSpan(span, self, method=method)

    def fusion(self, panel: str) -> TraceSpan:
        span = self._tracer.start_span(
            f"fusion {panel}", kind=SpanKind.INTERNAL, attributes={"fusion.panel": panel}
        )
        return OtelSpan(span, self)

    def chat(
        self,
        model: str,
        provider: str,
        body: Mapping[str, Any],
        *,
        role: Role,
        index: int | None,
        panel: str | None,
    ) -> TraceSpan:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "fusion.role": role,
        }
        if index is not None:
            attributes["fusion.member.index"] = index
        if panel is not None:
            attributes["fusion.panel"] = panel
        for field, name in _REQUEST_FIELDS:
            value = body.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        if self.capture_content:
            attributes["gen_ai.input.messages"] = _input_messages(body.get("messages"))
        span = self._tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
        return OtelSpan(span, self)

    def inject(self, headers: dict[str, str]) -> None:
        _PROPAGATOR.inject(headers)

    def note_response_model(self, model: str) -> None:
        span = trace.get_current_span()
        if span.is_recording() and span.kind == SpanKind.CLIENT:  # type: ignore[attr-defined]
            span.set_attribute("gen_ai.response.model", model)


class OtelSpan(TraceSpan):
    """One OpenTelemetry span behind the ``TraceSpan`` methods."""

    __slots__ = ("_ended", "_method", "_span", "_token", "_tracing")

    def __init__(self, span: trace.Span, tracing: OtelTracing, *, method: str = "") -> None:
        self._span = span
        self._tracing = tracing
        self._method = method
        self._token: object | None = None
        self._ended = False

    def __enter__(self) -> Self:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.fail(exc)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        self.end()

    @contextmanager
    def _activated(self) -> Iterator[None]:
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def activate(self) -> Any:
        return self._activated()

    def record_call(self, response: PanelResponse) -> None:
        span = self._span
        # One set_attributes: the SDK takes its span lock once per call, not per attribute.
        figures: dict[str, Any] = {
            "gen_ai.usage.input_tokens": response.tokens_in,
            "gen_ai.usage.output_tokens": response.tokens_out,
        }
        if response.finish_reason:
            figures["gen_ai.response.finish_reasons"] = [response.finish_reason]
        if response.cost_usd is not None:
            figures["fusion.cost_usd"] = response.cost_usd
        if response.attempts > 1:
            figures["fusion.attempts"] = response.attempts
        if response.error is not None:
            kind = response.error_kind or "error"
            figures["error.type"] = kind
            span.add_event(
                "exception", {"exception.type": kind, "exception.message": response.error}
            )
            span.set_status(Status(StatusCode.ERROR, response.error))
        elif self._tracing.capture_content:
            figures["gen_ai.output.messages"] = _output_messages(
                response.content, response.tool_calls, response.finish_reason
            )
        span.set_attributes(figures)

    def record_completion(self, completion: ChatCompletion) -> None:
        span = self._span
        if completion.model:
            span.set_attribute("gen_ai.response.model", completion.model)
        if completion.id:
            span.set_attribute("gen_ai.response.id", completion.id)
        usage = completion.usage
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            if usage.cost is not None:
                span.set_attribute("fusion.cost_usd", usage.cost)
        reasons = [choice.finish_reason for choice in completion.choices if choice.finish_reason]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if self._tracing.capture_content and completion.choices:
            choice = completion.choices[0]
            span.set_attribute(
                "gen_ai.output.messages",
                _output_messages(
                    choice.message.content, choice.message.tool_calls, choice.finish_reason
                ),
            )

    def record_usage(self, usage: Usage) -> None:
        figures: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
        }
        if usage.cost is not None:
            figures["fusion.cost_usd"] = usage.cost
        self._span.set_attributes(figures)

    def record_fusion(self, result: FusionResult, cache: str) -> None:
        figures: dict[str, Any] = {
            "fusion.cache": cache,
            "gen_ai.usage.input_tokens": result.tokens_in,
            "gen_ai.usage.output_tokens": result.tokens_out,
        }
        if result.total_cost is not None:
            figures["fusion.cost_usd"] = result.total_cost
        if result.agreement is not None:
            figures["fusion.agreement"] = result.agreement.score
        if result.degraded is not None:
            figures["fusion.degraded"] = result.degraded
        if result.judge_skipped is not None:
            figures["fusion.judge_skipped"] = result.judge_skipped
        self._span.set_attributes(figures)

    def record_http(self, route: str, status: int, key: str | None = None) -> None:
        span = self._span
        span.update_name(f"{self._method} {route}")
        span.set_attributes({"http.route": route, "http.response.status_code": status})
        if key is not None:  # a name from the config, never the key itself
            span.set_attribute("fusion.key", key)
        if status == _CLIENT_CLOSED:
            self._cancelled("the client disconnected")
        elif status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))

    def fail(self, error: BaseException) -> None:
        if is_cancellation(error):
            self._cancelled(str(error) or type(error).__name__)
            return
        self._span.record_exception(error)
        self._span.set_attribute("error.type", type(error).__qualname__)
        self._span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))

    def _cancelled(self, reason: str) -> None:
        self._span.add_event("cancelled", {"fusion.cancel_reason": reason})
        self._span.set_attribute("error.type", "cancelled")
        self._span.set_status(Status(StatusCode.ERROR, f"cancelled: {reason}"))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()

    def follow(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self._followed(body)

    async def _followed(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for part in body:
                yield part
        except BaseException as error:
            self.fail(error)
            raise
        finally:
            closing = getattr(body, "aclose", None)
            if closing is not None:
                await closing()  # the body's own cleanup (cancelling its fusion) runs first
            self.end()


#: Request fields recorded as GenAI request attributes when the client set them.
_REQUEST_FIELDS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
)


def _input_messages(messages: Any) -> str:
    """The GenAI ``gen_ai.input.messages`` JSON of a chat request's messages."""
    converted = []
    for message in msgspec.to_builtins(messages or []):
        if not isinstance(message, dict):
            continue
        parts: list[dict[str, Any]] = []
        content = message.get("content")
        if isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "content": part["text"]})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(
                {"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                 "arguments": function.get("arguments")}
            )  # fmt: skip
        if message.get("role") == "tool":
            parts = [
                {"type": "tool_call_response", "id": message.get("tool_call_id"),
                 "response": content}
            ]  # fmt: skip
        converted.append({"role": message.get("role"), "parts": parts})
    return _encode(converted).decode()


def _output_messages(content: str | None, tool_calls: Any, finish_reason: str | None) -> str:
    """The GenAI ``gen_ai.output.messages`` JSON of one answer."""
    parts: list[dict[str, Any]] = []
    if content:
        parts.append({"type": "text", "content": content})
    for call in msgspec.to_builtins(tool_calls or []):
        function = call.get("function") or {}
        parts.append(
            {"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
             "arguments": function.get("arguments")}
        )  # fmt: skip
    message = {"role": "assistant", "parts": parts, "finish_reason": finish_reason or "stop"}
    return _encode([message]).decode()
