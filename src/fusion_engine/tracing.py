"""OpenTelemetry traces, on when the environment names an OTLP endpoint; free when it does not.

``start(environ)`` (the server's lifespan, in each worker) turns tracing on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and only then
imports OpenTelemetry (through ``otel_traces``, the one module that does). Until then every
function here returns ``NO_SPAN``, whose methods do nothing: the cost of tracing off is one
module-level check per call.

The tree (README "Tracing"): the route's server span; under it a ``fusion <panel>`` span; under
that one ``chat <model>`` span per member attempt and judge call (a passed-through call's
``chat <model>`` span sits right under the server span). Upstream requests carry a
``traceparent`` naming their ``chat`` span.

Why module state: OpenTelemetry's context is process-wide already (context variables), and one
trace crosses the server, the engine and the upstream client; passing a tracer through all three
would cost every call an argument for a feature that is usually off.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    from typing import Self

    from .otel_traces import OtelTracing
    from .protocol import ChatCompletion, Usage
    from .results import FusionResult, PanelResponse

#: What ``otel_traces`` imports: the ``otel`` extra.
EXTRA_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")

Role = Literal["member", "judge", "passthrough"]

_NOTHING: AbstractContextManager[None] = nullcontext()
#: The tracer once ``start`` turned tracing on; ``None`` is the cheap path every call checks.
_tracing: OtelTracing | None = None


class TraceSpan:
    """A span of the trace, or (this base class, ``NO_SPAN``) nothing: every method is a no-op.

    ``with span:`` makes it the current span, records a failure or cancellation that leaves the
    block, and ends it. A span that outlives a block (a stream) uses ``activate`` while its work
    starts, then ``follow`` on the body it streams, which ends it when the stream ends.
    """

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def activate(self) -> AbstractContextManager[None]:
        """Make this the current span for the block (tasks started in it inherit it)."""
        return _NOTHING

    def record_call(self, response: PanelResponse) -> None:
        """A ``chat`` span's outcome: tokens, cost, finish reason, or the failure."""

    def record_completion(self, completion: ChatCompletion) -> None:
        """A passed-through ``chat`` span's outcome, from the provider's completion."""

    def record_usage(self, usage: Usage) -> None:
        """A streamed passed-through ``chat`` span's tokens and cost (its usage chunk)."""

    def record_fusion(self, result: FusionResult, cache: str) -> None:
        """A ``fusion`` span's figures: cost, tokens, agreement, degradation, cache result."""

    def record_http(self, route: str, status: int, key: str | None = None) -> None:
        """A server span's route, status and caller's key name (known once it is answered)."""

    def fail(self, error: BaseException) -> None:
        """Record ``error`` (a cancellation as such); the span still has to be ended."""

    def end(self) -> None:
        """End the span (idempotent)."""

    def follow(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, ending this span when it ends (a failure or disconnect recorded)."""
        return body


NO_SPAN = TraceSpan()


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for traces: it names an endpoint for the OTLP exporter."""
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def captures_content(environ: Mapping[str, str]) -> bool:
    """Whether prompts and answers go into ``chat`` spans (GenAI ``gen_ai.*.messages``)."""
    capture = environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return capture.strip().lower() == "true"


def require_extra(environ: Mapping[str, str]) -> None:
    """Check, before serving, that tracing asked for can be done.

    Raises:
        ConfigError: an OTLP endpoint is set but the ``otel`` extra is not installed.
    """
    if wanted(environ) and not all(_importable(module) for module in EXTRA_MODULES):
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'fusion-engine[otel]' (or unset it to serve without traces)"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def active() -> bool:
    """Whether tracing is on in this process."""
    return _tracing is not None


def start(environ: Mapping[str, str]) -> bool:
    """Turn tracing on if ``environ`` asks for it (once per process); whether it is on.

    Raises:
        ImportError: tracing is asked for but the ``otel`` extra is not installed.
    """
    global _tracing
    if _tracing is None and wanted(environ):
        from .otel_traces import OtelTracing  # only now: OpenTelemetry costs nothing when off

        _tracing = OtelTracing.from_environ(environ)
    return _tracing is not None


def shutdown() -> None:
    """Export what is still buffered and stop tracing (blocks up to the exporter's timeout)."""
    global _tracing
    tracing, _tracing = _tracing, None
    if tracing is not None:
        tracing.shutdown()


def server(method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> TraceSpan:
    """A request's server span, continuing the trace of its ``traceparent`` header if any."""
    if _tracing is None:
        return NO_SPAN
    return _tracing.server(method, path, headers)


def fusion(panel: str) -> TraceSpan:
    """A ``fusion <panel>`` span under the current one."""
    if _tracing is None:
        return NO_SPAN
    return _tracing.fusion(panel)


def chat(
    model: str,
    provider: str,
    body: Mapping[str, Any],
    *,
    role: Role,
    index: int | None = None,
    panel: str | None = None,
) -> TraceSpan:
    """A ``chat <model>`` span under the current one, for one upstream call of ``body``."""
    if _tracing is None:
        return NO_SPAN
    return _tracing.chat(model, provider, body, role=role, index=index, panel=panel)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``."""
    if _tracing is not None:
        _tracing.inject(headers)


def note_response_model(model: str) -> None:
    """The model the provider says answered, on the current ``chat`` span."""
    if _tracing is not None and model:
        _tracing.note_response_model(model)


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` means the work was called off (a deadline, a client that left), which
    a span records as a cancellation rather than a failure."""
    return isinstance(error, asyncio.CancelledError | GeneratorExit) or bool(
        getattr(error, "cancellation", False)
    )
