"""A provider's streamed events: each ``data:`` payload parsed into a chunk, and a failure
reported inside the stream turned into ``UpstreamError``."""

from __future__ import annotations

import msgspec

from .config import Provider
from .errors import UpstreamError
from .protocol import ChatCompletionChunk
from .provider_errors import error_message, redact

_decode_chunk = msgspec.json.Decoder(ChatCompletionChunk).decode


class StreamEvent(msgspec.Struct, frozen=True):
    """One streamed event: its JSON text as the provider sent it, and the parsed chunk."""

    data: bytes
    chunk: ChatCompletionChunk


def parse_batch(provider: Provider, batch: list[bytes], events: list[StreamEvent]) -> bool:
    """Append the events of one read to ``events``; whether ``[DONE]`` ended the stream."""
    for data in batch:
        if data == b"[DONE]":
            return True
        events.append(StreamEvent(data, parse_chunk(provider, data)))
    return False


def parse_chunk(provider: Provider, data: bytes) -> ChatCompletionChunk:
    try:
        chunk = _decode_chunk(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is the latter
        raise UpstreamError(
            f"{provider.name} sent a malformed stream event", kind="invalid_response"
        ) from exc
    if not chunk.error and any(choice.finish_reason == "error" for choice in chunk.choices):
        # OpenRouter ends a choice that failed mid-generation with finish_reason "error"
        # (sometimes without a top-level error): the text so far is not an answer.
        raise UpstreamError(f"{provider.name} failed mid-stream", kind="http_error")
    if chunk.error:
        text = data.decode("utf-8", "replace")
        message = chunk.error if isinstance(chunk.error, str) else error_message(text)
        raise UpstreamError(
            f"{provider.name} failed mid-stream: {redact(message or 'unknown error', provider)}",
            kind="http_error",
        )
    return chunk
