"""Scripting structs for the fake upstream, and what a scripted reply answers.

A test scripts :class:`Reply` objects per model slug; the server records every chat request
as a :class:`ReceivedRequest`. The functions here hold no I/O: :func:`resolve_answer` turns a
reply plus the request body into content, finish reason and usage;
:mod:`fusion_engine.testing.wire_bodies` puts that into OpenRouter-flavoured wire objects, so
the HTTP layer in :mod:`fusion_engine.testing.fake_upstream` only does timing, framing and
recording.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import yaml

ErrorShape = Literal["openrouter", "openai", "vllm", "html", "string"]
"""Error body flavours a :class:`Reply` can produce for a non-200 status."""

DEFAULT_PRICE: Final[tuple[float, float]] = (1e-6, 2e-6)
"""USD per (prompt, completion) token for models without an explicit price."""

PROVIDER_NAME: Final = "Fake"
"""The ``provider`` the fake reports, as OpenRouter names the provider that served a request."""

PROVIDER_ERROR_CODE: Final = 502
"""``code`` of in-band provider errors (``choices[0].error`` and mid-stream error events)."""

_WORD: Final = re.compile(r"\S+")


class FakeToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tool call the fake model answers with.

    ``arguments`` is sent verbatim, so a test can send invalid JSON on purpose; ``id`` defaults
    to a random ``call_…`` id.
    """

    name: str
    arguments: str
    id: str | None = None


class Reply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the fake answers to one chat request for a model; every field is optional.

    Attributes:
        text: the answer. With neither ``text`` nor ``tool_calls`` it is
            ``f"{model} answer: {last user message text}"`` (text parts joined by a space).
        tool_calls: answer with these calls (``content: null`` unless ``text`` is also set,
            ``finish_reason: "tool_calls"``).
        reasoning: sent as ``message.reasoning`` / ``delta.reasoning``, before the content.
        delay_s: sleep before the status line.
        hang: never answer; the request ends up in ``cancelled`` once the client gives up.
        status: HTTP status; anything but 200 sends an error body in ``error_shape``.
        error_shape: ``openrouter`` / ``openai`` / ``vllm`` (flat) / ``html`` / ``string``.
        error_message: message of the error body or of the mid-stream error event.
        body: raw response body overriding everything else (a str is sent as-is as
            ``text/plain``, anything else as JSON), sent with ``status``.
        retry_after: seconds for a ``Retry-After`` header.
        headers: extra response headers, e.g. ``x-should-retry``.
        malformed: status 200 with a truncated JSON body (streamed: a truncated data event).
        choice_error: status 200 with ``choices[0].error``, ``finish_reason: "error"`` and
            the first half of the answer's words.
        prompt_tokens: usage override (default: words of every message plus 1 per message).
        completion_tokens: usage override (default: words of the answer, at least 1).
        cost: ``usage.cost`` override (default: tokens times the model's price).
        include_cost: False omits ``usage.cost``, like a local llama.cpp server.
        include_usage: False omits ``usage`` and the final usage chunk.
        finish_reason: override of ``stop`` / ``tool_calls`` / ``length`` / ``error``.
        chunk_size: streaming: characters per content, reasoning or arguments chunk.
        chunk_delay_s: streaming: sleep between consecutive events.
        comments: streaming: a ``: OPENROUTER PROCESSING`` comment before every event.
        crlf: streaming: ``\\r\\n`` line endings.
        cut_after_chunks: streaming: close the TCP connection after this many reasoning,
            content or tool-call chunks (no finish chunk, no ``[DONE]``).
        no_done: streaming: send the finish and usage chunks but no ``data: [DONE]``.
        stream_error_after_chunks: streaming: after this many chunks send OpenRouter's
            mid-stream error event (code 502) and end the stream without ``[DONE]``.
    """

    text: str | None = None
    tool_calls: list[FakeToolCall] | None = None
    reasoning: str | None = None
    delay_s: float = 0.0
    hang: bool = False
    status: int = 200
    error_shape: ErrorShape = "openrouter"
    error_message: str | None = None
    body: Any | None = None
    retry_after: float | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    malformed: bool = False
    choice_error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    include_cost: bool = True
    include_usage: bool = True
    finish_reason: str | None = None
    chunk_size: Annotated[int, msgspec.Meta(ge=1)] = 8
    chunk_delay_s: float = 0.0
    comments: bool = False
    crlf: bool = False
    cut_after_chunks: int | None = None
    no_done: bool = False
    stream_error_after_chunks: int | None = None


class ReceivedRequest(msgspec.Struct, frozen=True):
    """One chat request as the fake received it."""

    path: str
    headers: dict[str, str]
    """Header names are lower-cased; a repeated header keeps its last value."""
    body: dict[str, Any]
    model: str
    stream: bool
    received_at: float
    """``time.monotonic()`` on arrival."""


class ResolvedToolCall(msgspec.Struct, frozen=True):
    """A tool call with its id settled, ready to be framed."""

    id: str
    name: str
    arguments: str


class Answer(msgspec.Struct, frozen=True):
    """Everything the HTTP layer needs to frame a successful (status 200) reply."""

    content: str | None
    reasoning: str | None
    tool_calls: list[ResolvedToolCall]
    finish_reason: str
    usage: dict[str, Any] | None
    choice_error: dict[str, Any] | None


def message_text(message: Any) -> str:
    """Return the text of a chat message: its string content or its text parts, space-joined."""
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def conversation_text(body: Mapping[str, Any]) -> str:
    """All message texts of a request joined by newlines (what ``script_matching`` searches)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(message_text(m) for m in messages if isinstance(m, Mapping))


def default_text(model: str, body: Mapping[str, Any]) -> str:
    """Return the deterministic default answer: ``"<model> answer: <last user text>"``."""
    messages = body.get("messages")
    last_user = ""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                last_user = message_text(message)
                break
    return f"{model} answer: {last_user}"


def count_words(text: str | None) -> int:
    """Return the number of whitespace-separated words, the fake's notion of a token."""
    return len(_WORD.findall(text)) if text else 0


def prompt_token_count(body: Mapping[str, Any]) -> int:
    """Return the fake prompt size: words of every message plus one per message, at least 1."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 1
    return max(1, sum(count_words(message_text(m)) + 1 for m in messages))


def truncate_words(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` after ``limit`` words, keeping the original spacing; say whether it cut."""
    matches = list(_WORD.finditer(text))
    if len(matches) <= limit:
        return text, False
    if limit <= 0:
        return "", True
    return text[: matches[limit - 1].end()], True


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        # bool is an int subclass; `true` is not a token limit.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def resolve_answer(
    reply: Reply,
    model: str,
    body: Mapping[str, Any],
    price: tuple[float, float] = DEFAULT_PRICE,
) -> Answer:
    """Work out the content, finish reason and usage a 200 reply sends for this request.

    Args:
        reply: the scripted reply.
        model: the requested model slug (echoed and used in the default text).
        body: the parsed request body (messages and ``max_tokens`` are read).
        price: USD per (prompt, completion) token, used when ``reply.cost`` is unset.
    """
    tool_calls = [
        ResolvedToolCall(call.id or f"call_{secrets.token_hex(12)}", call.name, call.arguments)
        for call in reply.tool_calls or []
    ]
    content: str | None = reply.text
    if content is None and not tool_calls:
        content = default_text(model, body)
    finish_reason = "tool_calls" if tool_calls else "stop"
    limit = _max_tokens(body)
    if content is not None and limit is not None:
        content, cut = truncate_words(content, limit)
        if cut:
            finish_reason = "length"
    choice_error: dict[str, Any] | None = None
    if reply.choice_error is not None:
        # OpenRouter keeps what the provider produced before it failed.
        content, _ = truncate_words(content or "", count_words(content) // 2)
        finish_reason = "error"
        choice_error = {"code": PROVIDER_ERROR_CODE, "message": reply.choice_error}
    if reply.finish_reason is not None:
        finish_reason = reply.finish_reason

    usage: dict[str, Any] | None = None
    if reply.include_usage:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = prompt_token_count(body)
        reasoning_tokens = count_words(reply.reasoning)
        completion = reply.completion_tokens
        if completion is None:
            completion = max(
                1,
                count_words(content)
                + reasoning_tokens
                + sum(count_words(c.arguments) + 1 for c in tool_calls),
            )
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        }
        if reply.include_cost:
            cost = reply.cost
            if cost is None:
                # Rounded so that float noise does not leak into assertions on the total.
                cost = round(prompt * price[0] + completion * price[1], 12)
            usage["cost"] = cost
    return Answer(
        content=content,
        reasoning=reply.reasoning,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        usage=usage,
        choice_error=choice_error,
    )


def parse_script(data: Any) -> dict[str, list[Reply]]:
    """Validate a ``{slug: [reply, ...]}`` mapping (a single reply object is also accepted).

    Raises:
        msgspec.ValidationError: naming the path of the offending field.
    """
    converted = msgspec.convert(data, type=dict[str, list[Reply] | Reply])
    return {slug: r if isinstance(r, list) else [r] for slug, r in converted.items()}


def load_script(path: str | Path) -> dict[str, list[Reply]]:
    """Load a script file (YAML or JSON, which is YAML too) in the :func:`parse_script` shape.

    Raises:
        OSError: if the file cannot be read.
        yaml.YAMLError: if it is not YAML.
        msgspec.ValidationError: if it does not describe replies.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return parse_script({} if data is None else data)
