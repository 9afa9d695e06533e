"""Reading an HTTP body no further than a bound (the upstream client's answers and errors).

A provider's reply is data from outside: a body is read only up to its bound, and a reply that
announces more (a plain ``Content-Length``) is refused before any of it is read.
"""

from __future__ import annotations

import aiohttp

#: The largest answer a call may bring (a non-streamed body, or a stream's events together):
#: three 50 MB answers once got a worker killed. Over it, the call fails with an error.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: An error body is read only this far: its message is all we keep.
MAX_ERROR_BODY_BYTES = 64 * 1024


class BodyTooLargeError(Exception):
    """A response body is longer than the bound it was read with."""


async def read_bounded(response: aiohttp.ClientResponse, limit: int, *, cut: bool = False) -> bytes:
    """The response body, read no further than ``limit`` bytes.

    Raises:
        BodyTooLargeError: the body is longer (said by ``Content-Length`` before reading, or
            found while reading); with ``cut`` the first ``limit`` bytes are returned instead.
    """
    length = response.content_length
    # Content-Length counts packed bytes when the body is compressed: only a plain body's
    # announced length tells what reading it costs.
    plain = "Content-Encoding" not in response.headers
    if length is not None and length <= limit and plain:
        return await response.read()  # announced and small enough: aiohttp's one-buffer read
    if length is not None and length > limit and not cut:
        raise BodyTooLargeError(length)
    parts: list[bytes] = []
    size = 0
    async for block in response.content.iter_any():
        parts.append(block)
        size += len(block)
        if size > limit:
            if not cut:
                raise BodyTooLargeError(size)
            return b"".join(parts)[:limit]
    return b"".join(parts)


def mib(size: int) -> str:
    """``size`` in MiB for a message (``8 MiB``)."""
    return f"{size / (1024 * 1024):g} MiB"
