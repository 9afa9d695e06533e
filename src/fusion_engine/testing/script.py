"""Scripting structs for the fake upstream, and the pure half of serving them.

A test scripts :class:`Reply` objects per model slug; the server records every chat request
as a :class:`ReceivedRequest`. The functions here hold no I/O: :func:`resolve_answer` turns a
reply plus the request body into content, finish reason and usage, and the ``*_body`` /
:func:`stream_deltas` builders put that into OpenRouter-flavoured wire objects, so the HTTP
layer in :mod:`fusion_engine.testing.fake_upstream` only does timing, framing and recording.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Mapping
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
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
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_MODEL_CREATED: Final = 1_700_000_000
_CONTEXT_LENGTH: Final = 131_072
_OPENROUTER_ERROR_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "invalid_request",
        401: "authentication",
        402: "payment_required",
        403: "permission_denied",
        404: "not_found",
        408: "timeout",
        413: "payload_too_large",
        422: "unprocessable",
        429: "rate_limit_exceeded",
        500: "server",
        502: "provider_unavailable",
        503: "provider_overloaded",
        504: "timeout",
    }
)
_OPENAI_ERROR_TYPES: Final[Mapping[int, tuple[str, str | None]]] = MappingProxyType(
    {
        401: ("authentication_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        503: ("service_unavailable_error", "server_is_overloaded"),
    }
)


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


def generation_id() -> str:
    """Return a fresh OpenRouter-style generation id, ``gen-<unix time>-<20 random chars>``."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
    return f"gen-{int(time.time())}-{suffix}"


def completion_body(answer: Answer, model: str, gen_id: str) -> dict[str, Any]:
    """Build a non-streamed ``chat.completion`` body in OpenRouter's flavour."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
    if answer.reasoning is not None:
        message["reasoning"] = answer.reasoning
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.tool_calls
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": answer.finish_reason,
        "native_finish_reason": answer.finish_reason,
        "logprobs": None,
    }
    if answer.choice_error is not None:
        choice["error"] = answer.choice_error
    body: dict[str, Any] = {
        "id": gen_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "provider": PROVIDER_NAME,
        "choices": [choice],
    }
    if answer.usage is not None:
        body["usage"] = answer.usage
    return body


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_deltas(answer: Answer, size: int) -> list[dict[str, Any]]:
    """Split an answer into the deltas that follow the role chunk, ``size`` characters each.

    Reasoning comes first, then content, then each tool call: a first fragment with ``id``,
    ``type``, ``name`` and ``arguments: ""``, then pieces of ``arguments`` under ``index`` only.
    """
    deltas: list[dict[str, Any]] = [{"reasoning": p} for p in _pieces(answer.reasoning or "", size)]
    deltas += [{"content": p} for p in _pieces(answer.content or "", size)]
    for index, call in enumerate(answer.tool_calls):
        # Only the first fragment names the call: clients concatenate string fields, so a
        # repeated id or name would come out doubled.
        function = {"name": call.name, "arguments": ""}
        first = {"index": index, "id": call.id, "type": "function", "function": function}
        deltas.append({"tool_calls": [first]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in _pieces(call.arguments, size)
        ]
    return deltas


def stream_error_event(message: str) -> dict[str, Any]:
    """Return the ``error`` and terminating choice of OpenRouter's mid-stream error event."""
    error_type = _OPENROUTER_ERROR_TYPES[PROVIDER_ERROR_CODE]
    error = {
        "code": PROVIDER_ERROR_CODE,
        "message": message,
        "metadata": {"error_type": error_type},
    }
    choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
    return {"error": error, "choices": [choice]}


def status_phrase(status: int) -> str:
    """Return the HTTP reason phrase for ``status`` ("Error" for codes ``http`` does not know)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(shape: ErrorShape, status: int, message: str) -> tuple[Any, bool]:
    """Return an error body in one upstream's shape and whether it is HTML (else JSON)."""
    if shape == "openrouter":
        metadata = {"error_type": _OPENROUTER_ERROR_TYPES.get(status, "unmapped")}
        return {"error": {"code": status, "message": message, "metadata": metadata}}, False
    if shape == "openai":
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        error_type, code = _OPENAI_ERROR_TYPES.get(status, (default_type, None))
        error = {"message": message, "type": error_type, "param": None, "code": code}
        return {"error": error}, False
    if shape == "vllm":
        phrase = status_phrase(status).replace(" ", "").replace("-", "")
        error_type = phrase if phrase.endswith("Error") else f"{phrase}Error"
        flat = {"object": "error", "message": message, "type": error_type, "param": None}
        return {**flat, "code": status}, False
    if shape == "html":
        title = f"{status} {status_phrase(status)}"
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return page, True
    return {"error": message}, False


def _price_string(value: float) -> str:
    # OpenRouter writes prices as plain decimals ("0.000001"), never in exponent notation.
    return format(Decimal(repr(value)), "f")


def model_entry(slug: str, price: tuple[float, float]) -> dict[str, Any]:
    """Return one ``/models`` entry in OpenRouter's shape (prices are USD-per-token strings)."""
    return {
        "id": slug,
        "canonical_slug": slug,
        "name": f"{PROVIDER_NAME}: {slug}",
        "created": _MODEL_CREATED,
        "description": "A scripted model served by the fake upstream.",
        "context_length": _CONTEXT_LENGTH,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
        },
        "pricing": {
            "prompt": _price_string(price[0]),
            "completion": _price_string(price[1]),
            "request": "0",
            "image": "0",
        },
        "top_provider": {
            "context_length": _CONTEXT_LENGTH,
            "max_completion_tokens": 32_768,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice"],
        "default_parameters": {},
        "expiration_date": None,
    }


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
