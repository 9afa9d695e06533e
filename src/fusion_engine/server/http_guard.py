"""uvicorn's httptools protocol with two limits on request heads: size (431) and time (close).

httptools (llhttp) has no head size limit, and its Python binding grows a header value or URL
that arrives in pieces by concatenating bytes, so the work is quadratic in its length: one
connection sending a 100 MiB header held a worker's loop for 14 s (/health stalled, then
gunicorn's WORKER TIMEOUT killed it with every stream it carried). h11 has a size cap, but it
parses in Python and costs far more per request than httptools. This guard keeps httptools and
stops feeding it once a head passes ``HEAD_LIMIT_BYTES``, so the parser's work stays linear and
bounded, and answers 431 in the OpenAI error shape.

Nothing in uvicorn bounds how long a head may take either (its keep-alive timer only runs
between requests): 1,100 connections each sending half a head held every file descriptor of
a worker. A head must now be complete within ``HEAD_TIMEOUT_S`` of its first byte (or of the
connection's opening), else the connection is closed. Idle keep-alive connections between
requests are still governed by uvicorn's own keep-alive timeout.

Used by the gunicorn worker (``worker.GatewayWorker``) and by ``fusion serve --dev``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .request_id import new_id
from .schema import ErrorBody, ErrorDetail

#: The design's limit on a request head (request line and headers) in all.
HEAD_LIMIT_BYTES = 16 * 1024
#: How long a connection may take to send a whole request head.
HEAD_TIMEOUT_S = 10.0

_BODY_431 = msgspec.json.encode(
    ErrorBody(
        ErrorDetail(
            message=f"request headers are larger than {HEAD_LIMIT_BYTES} bytes in all",
            type="invalid_request_error",
            param=None,
            code="request_header_fields_too_large",
        )
    )
)


class HeadTooLargeError(Exception):
    """Raised from a parser callback to stop httptools mid-feed (it wraps it in its own error)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses heads over ``HEAD_LIMIT_BYTES`` with 431 and closes
    connections whose head is not complete within ``HEAD_TIMEOUT_S``.

    Per request this adds a few attribute updates (about 2 us of CPU, measured against
    uvicorn's class); body bytes take uvicorn's path after a single flag check.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        #: True while the bytes arriving belong to a request head (or to none yet).
        self._head_open = True
        #: Bytes received while the current head was open (an upper bound of its size when
        #: ``_counted_from_start``).
        self._head_bytes = 0
        #: Whether ``_head_bytes`` counts the open head from its first byte: not when it began
        #: in the read that ended the previous request (pipelining).
        self._counted_from_start = False
        #: Whether httptools has seen the open head's first byte.
        self._head_begun = False
        #: When the open head began (``None`` while no head is arriving).
        self._head_started: float | None = None
        #: One timer per connection, not per request: it stays armed across fast requests and,
        #: when it fires, closes the connection only if the open head began too long ago.
        self._head_timer: asyncio.TimerHandle | None = None
        #: Armed when a reply went out before its request's body had arrived whole.
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A new connection's first head is timed from the connection, so silence counts too.
        self._head_started = self.loop.time()
        self._arm_head_timer(HEAD_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._head_open:  # body bytes: uvicorn's path untouched
            super().data_received(data)
            return
        if self._refused:
            return
        if self._head_started is None:
            # Bytes between requests start the next head's clock even before httptools calls
            # on_message_begin: it skips stray CR/LF silently, and each byte would otherwise
            # cancel uvicorn's keep-alive timer and leave the connection untimed.
            self._head_started = self.loop.time()
            if self._head_timer is None:
                self._arm_head_timer(HEAD_TIMEOUT_S)
        if self._head_bytes == 0 and not self._head_begun:
            self._counted_from_start = True  # this read starts the head
        self._head_bytes += len(data)
        super().data_received(data)
        # Still inside the head and past the limit: stop here, before httptools is fed (and
        # re-concatenates) any more of it.
        if self._head_open and self._head_bytes > HEAD_LIMIT_BYTES and not self._refused:
            self._refuse()

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        # The first byte of a keep-alive connection's next request starts its head's clock.
        if self._head_started is None:
            self._head_started = self.loop.time()
            if self._head_timer is None:
                self._arm_head_timer(HEAD_TIMEOUT_S)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_started = None
        # The raw count also holds body bytes that came in the same read, so it only tells
        # when the exact size (what httptools parsed) is worth adding up.
        suspect = self._head_bytes > HEAD_LIMIT_BYTES or not self._counted_from_start
        if suspect and self._parsed_head_size() > HEAD_LIMIT_BYTES:
            self._refused = True
            self._head_open = True  # what still arrives goes to the refused-head path
            raise HeadTooLargeError  # uvicorn turns it into send_400_response, answered below
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self._head_open = True
        self._head_bytes = 0
        self._counted_from_start = self._head_begun = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self._head_open and not self.transport.is_closing():
            # Answered before the request's body arrived whole (a 401 to a keyless client, a
            # 413): the rest of the body may take at most HEAD_TIMEOUT_S more, so a client
            # trickling a body nobody reads cannot hold the connection. Not closed at once: a
            # close with unread input resets the connection, and the client could lose the reply.
            self._body_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._body_timed_out)
        super().on_response_complete()

    # --- refusing --------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's reply to a parser error; a head refused for its size gets 431 instead."""
        if self._refused:
            self._send_431()
        else:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self._send_431()

    def _send_431(self) -> None:
        self._cancel_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The head was pipelined behind a request still being answered: a 431 now would
            # arrive before that reply. Finish the reply and close instead; read no more.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.logger.warning("Request head over %d bytes refused with 431.", HEAD_LIMIT_BYTES)
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-request-id: %s\r\n"
            b"x-should-retry: false\r\n"
            b"connection: close\r\n\r\n"
        ) % (len(_BODY_431), new_id().encode())
        if not self.transport.is_closing():
            self.transport.write(head + _BODY_431)
            self.transport.close()

    def _parsed_head_size(self) -> int:
        """Request line and headers as parsed (names, values and their separators)."""
        size = len(self.url) + 16  # method, version and line ends, generously
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    # --- head timer ------------------------------------------------------------------------

    def _arm_head_timer(self, delay_s: float) -> None:
        self._head_timer = self.loop.call_later(delay_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        started = self._head_started
        if started is None or not self._head_open or self.transport.is_closing():
            return  # no head arriving now: the next one arms a timer of its own
        left = started + HEAD_TIMEOUT_S - self.loop.time()
        if left > 0:  # a later head than the one this timer was armed for
            self._arm_head_timer(left)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head is dribbling in behind a reply still being sent: let that reply
            # finish, then close instead of keeping the connection.
            cycle.keep_alive = False
            return
        self.logger.info("Connection closed: no whole request head within %.0f s.", HEAD_TIMEOUT_S)
        self.transport.close()

    # --- body left unread after the reply --------------------------------------------------

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._head_open and not self.transport.is_closing():
            self.logger.info(
                "Connection closed: the rest of an answered request's body took over %.0f s.",
                HEAD_TIMEOUT_S,
            )
            self.transport.close()
