"""Server-sent events decoding, as lenient as the clients that read OpenAI streams.

Lines may end in LF or CRLF; comment lines (``: OPENROUTER PROCESSING``) are skipped; several
``data:`` lines of one event are joined with a newline; a last event missing its blank line is
still delivered, because a truncated stream's final event is often exactly that.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_sse_data(lines: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the data of each event read from ``lines`` (each ending in LF or CRLF)."""
    data_lines: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
            continue
        # A comment line (": ...") parses as the empty field name and is ignored with the rest.
        field, _, value = line.partition(":")
        if field == "data":
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        yield "\n".join(data_lines)
