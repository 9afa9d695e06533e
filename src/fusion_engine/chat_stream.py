"""The gateway's answer in API-neutral parts, as the Responses and Messages translations read it.

Every answer the gateway gives is produced in chat-completions form: fused (the engine's
``FusionResult``, the judge's chunks) or passed through (a provider's ``chat.completion`` and
chunks). The chat route sends that form as it is; ``responses_api`` and ``messages_api`` render
it in their own API through the two shapes here, so fusion, passthrough, cache, streaming and
errors stay one pipeline whichever API the client speaks:

- ``ChatAnswer``: a whole non-streamed answer;
- ``StreamRenderer``: a streamed answer, fed part by part in the order the gateway learns it.

Pure: no Litestar, no aiohttp.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from .protocol import ToolCall


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost of the whole answer (every member and the judge when fused)."""

    input_tokens: int = 0
    output_tokens: int = 0
    #: ``None`` when a provider reported no cost (never invented).
    cost_usd: float | None = None


class ChatAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A whole answer: text and/or tool calls, why it stopped, what it cost.

    ``fusion`` is the ``fusion`` detail object (already in its wire form) on fused answers and
    ``None`` on passed-through ones.
    """

    text: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    #: chat-completions' ``finish_reason``: ``stop``, ``length``, ``tool_calls``,
    #: ``content_filter``, or ``None`` when the provider gave none.
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    fusion: Any = None


class StreamFailure(msgspec.Struct, frozen=True, kw_only=True):
    """An error that ends a stream after its status line was sent."""

    status: int
    message: str
    #: OpenAI's error ``type`` (``server_error``, ``rate_limit_error``...).
    type: str
    code: str | None = None
    #: The request field the error is about, when there is one.
    param: str | None = None


class StreamRenderer(Protocol):
    """Renders one streamed answer as the bytes of an API's SSE stream.

    The gateway calls ``open`` once, before anything else; then any number of ``progress``,
    ``keepalive``, ``text`` and ``tool_call``; then ``finish`` and ``usage`` (each at most
    once, in either order, either possibly missing when a provider sent none) and ``close``; or,
    at any point after ``open``, ``fail`` (nothing follows it). A method returns ``b""`` when
    it has nothing to send yet: a renderer may hold what it learns (usage, the stop reason)
    until ``close``.
    """

    def open(self) -> bytes:
        """The first events (``response.created``, ``message_start``...)."""
        ...

    def progress(self, finished: int, total: int) -> bytes:
        """``finished`` of ``total`` panel members have answered (fused streams only)."""
        ...

    def keepalive(self) -> bytes:
        """Nothing happened for a keep-alive interval: keep the connection busy."""
        ...

    def text(self, delta: str) -> bytes:
        """A piece of the answer's text."""
        ...

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """A piece of tool call number ``index``: its first piece has ``call_id`` and ``name``
        (both may be ``None`` in later pieces); ``arguments`` is the next fragment of the JSON
        arguments (possibly empty)."""
        ...

    def finish(self, finish_reason: str | None, fusion: Any = None) -> bytes:
        """Why the answer stopped (chat-completions' ``finish_reason``) and, when fused, the
        ``fusion`` detail object."""
        ...

    def usage(self, usage: TokenUsage) -> bytes:
        """What the answer used and cost."""
        ...

    def close(self) -> bytes:
        """The closing events of a successful stream (``response.completed``,
        ``message_stop``...)."""
        ...

    def fail(self, failure: StreamFailure) -> bytes:
        """The events that end a stream that failed after it started."""
        ...


class HoldsTheEnd:
    """``finish`` and ``usage`` of a ``StreamRenderer`` whose API sends the stop reason, the
    usage and the fusion detail only in its closing events (Anthropic's ``message_delta``, the
    Responses API's ``response.completed``): they are kept for ``close``. The renderer's
    ``__init__`` sets the three fields to ``None``."""

    _finish_reason: str | None
    _fusion: Any
    _usage: TokenUsage | None

    def finish(self, finish_reason: str | None, fusion: Any = None) -> bytes:
        self._finish_reason = finish_reason
        if fusion is not None:
            self._fusion = fusion
        return b""

    def usage(self, usage: TokenUsage) -> bytes:
        self._usage = usage
        return b""


class AnswerApi(Protocol):
    """How one API shows the gateway's answers: the Responses and Messages translations each
    give one to the server's single answer pipeline."""

    def renderer(self) -> StreamRenderer:
        """A renderer for one streamed answer."""
        ...

    def reply(self, answer: ChatAnswer) -> Any:
        """The JSON body (msgspec-encodable) of a non-streamed answer."""
        ...

    async def answered(self, answer: ChatAnswer) -> None:
        """Called once with a complete successful answer, streamed or not, fused or passed
        through, before its last bytes go out (the Responses API stores it here)."""
        ...
