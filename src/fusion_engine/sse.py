"""Server-sent events decoding, as lenient as the clients that read OpenAI streams.

Lines may end in LF or CRLF; comment lines (``: OPENROUTER PROCESSING``) are skipped; several
``data:`` lines of one event are joined with a newline; a last event missing its blank line is
still delivered, because a truncated stream's final event is often exactly that.

The stream is read in blocks as the network delivers them, not line by line: a block usually
holds several events (a model streaming fast, or a burst after a pause), and handing them on
together lets the relay write them to the client in one send. Event data stays ``bytes``:
msgspec decodes bytes, and a passthrough writes them back unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable


class EventTooLargeError(ValueError):
    """A line or an event grew past the decoder's limit."""


class SseDecoder:
    """Incremental decoder: ``feed`` blocks, get the data of every event they complete.

    Args:
        max_line_bytes: the longest line, and the largest event, accepted; more raises
            ``EventTooLargeError`` rather than buffering without bound.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line_bytes = max_line_bytes
        self._partial: list[bytes] = []  # the pieces of a line whose end has not arrived
        self._partial_size = 0
        self._data: list[bytes] = []  # the data lines of the event being read
        self._data_size = 0

    def feed(self, block: bytes) -> list[bytes]:
        """The data of each event that ``block`` completes, in order."""
        if b"\n" not in block:
            self._keep_partial(block)
            return []
        if self._partial:
            self._partial.append(block)
            block = b"".join(self._partial)
            self._partial, self._partial_size = [], 0
        lines = block.split(b"\n")
        self._keep_partial(lines.pop())
        events: list[bytes] = []
        for line in lines:
            self._take_line(line, events)
        return events

    def close(self) -> list[bytes]:
        """The data of the event the stream ended in the middle of, if any."""
        events: list[bytes] = []
        if self._partial:
            self._take_line(b"".join(self._partial), events)
            self._partial, self._partial_size = [], 0
        self._take_line(b"", events)
        return events

    def _keep_partial(self, piece: bytes) -> None:
        if not piece:
            return
        self._partial_size += len(piece)
        if self._partial_size > self._max_line_bytes:
            raise EventTooLargeError(f"a stream line is longer than {self._max_line_bytes} bytes")
        self._partial.append(piece)

    def _take_line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data, self._data_size = [], 0
            return
        # A comment line (": ...") parses as the empty field name and is ignored with the rest.
        field, _, value = line.partition(b":")
        if field == b"data":
            self._data_size += len(value)
            if self._data_size > self._max_line_bytes:
                raise EventTooLargeError(f"an event is longer than {self._max_line_bytes} bytes")
            self._data.append(value[1:] if value.startswith(b" ") else value)


async def iter_sse_batches(
    blocks: AsyncIterable[bytes], *, max_line_bytes: int
) -> AsyncGenerator[list[bytes], None]:
    """The data of the events completed by each block read from ``blocks`` (empty lists
    skipped), then of an unterminated last event."""
    decoder = SseDecoder(max_line_bytes)
    async for block in blocks:
        events = decoder.feed(block)
        if events:
            yield events
    last = decoder.close()
    if last:
        yield last
