"""Request heads are bounded in size (431) and in time (closed), driven the way the red team
found it: raw sockets against a real `fusion serve` (gunicorn + uvicorn worker)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fusion_engine.server.http_guard import HEAD_LIMIT_BYTES, HEAD_TIMEOUT_S
from fusion_engine.testing import Reply

from .helpers import FakeInThread, GatewayProcess, gateway_env

KEY = "guard-key"
HEALTH_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(upstream.fake, KEY))
    yield process
    process.stop()


def connect(gateway: GatewayProcess, *, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout_s)


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def health_answers(gateway: GatewayProcess) -> float:
    """Seconds /health took (raises when it did not answer 200 in time)."""
    started = time.monotonic()
    reply = httpx.get(f"{gateway.base_url}/health", timeout=HEALTH_TIMEOUT_S)
    assert reply.status_code == 200
    return time.monotonic() - started


def assert_431(reply: bytes) -> None:
    status, headers, body = parse(reply)
    assert status == 431, reply[:200]
    assert headers["connection"] == "close"
    assert headers["x-should-retry"] == "false"
    assert headers.get("x-request-id")
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert set(error) == {"message", "type", "param", "code"}


def test_a_1_mib_header_is_refused_with_431(gateway: GatewayProcess) -> None:
    """A head of 1 MiB sent at once gets 431 in the OpenAI error shape, and the connection ends."""
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n")
        assert_431(read_reply(sock))
    health_answers(gateway)


def test_the_dev_server_refuses_it_too(upstream: FakeInThread) -> None:
    """`fusion serve --dev` (uvicorn without gunicorn) uses the same guarded protocol."""
    dev = GatewayProcess(gateway_env(upstream.fake, KEY), args=["--dev"])
    try:
        with connect(dev) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n")
            assert_431(read_reply(sock))
    finally:
        dev.stop()


def test_a_head_just_under_the_limit_is_served(gateway: GatewayProcess) -> None:
    """Many headers adding up to just under 16 KiB are a normal request."""
    headers = {f"x-pad-{i}": "b" * 100 for i in range((HEAD_LIMIT_BYTES - 1024) // 110)}
    reply = httpx.get(f"{gateway.base_url}/health", headers=headers, timeout=5)
    assert reply.status_code == 200


def test_a_streamed_100_mib_header_is_refused_while_the_worker_keeps_serving(
    gateway: GatewayProcess, upstream: FakeInThread
) -> None:
    """A header streamed in 64 KiB pieces up to 100 MiB: 431 at once, /health answers
    throughout, and a request already in flight finishes with 200."""
    upstream.fake.reset()
    upstream.fake.script("guard/slow", Reply(text="still here", delay_s=1.5))
    chat = ThreadPoolExecutor(1).submit(
        httpx.post,
        f"{gateway.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "guard/slow", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    sent = 0
    reply: list[bytes] = []

    def attack() -> None:
        nonlocal sent
        with connect(gateway, timeout_s=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: ")
            piece = b"a" * 65536
            try:
                while sent < 100 * 2**20:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass  # the server closed the connection: what we want
            reply.append(read_reply(sock))

    attacker = threading.Thread(target=attack)
    started = time.monotonic()
    attacker.start()
    slowest = 0.0
    while attacker.is_alive() and time.monotonic() - started < 60:
        slowest = max(slowest, health_answers(gateway))
        time.sleep(0.05)
    attacker.join(60)
    assert not attacker.is_alive()
    # What the kernel buffers on loopback (a few MiB) is all that was sent before the close.
    assert sent < 16 * 2**20, f"the server took {sent} bytes of one header"
    assert_431(reply[0])
    assert chat.result(30).status_code == 200
    assert slowest < HEALTH_TIMEOUT_S


def test_half_a_head_is_closed_after_the_head_timeout(gateway: GatewayProcess) -> None:
    """A connection that sends part of a head (or nothing) is closed after 10 s; one whose head
    trickles in but completes in time is served."""
    with (
        connect(gateway, timeout_s=HEAD_TIMEOUT_S + 10) as half,
        connect(gateway, timeout_s=HEAD_TIMEOUT_S + 10) as silent,
        connect(gateway, timeout_s=HEAD_TIMEOUT_S + 10) as slow,
    ):
        opened = time.monotonic()
        half.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n"):
            slow.sendall(piece)
            time.sleep(1)
        assert parse(read_until_reply(slow))[0] == 200
        assert half.recv(1) == b""  # closed by the server (blocks until then)
        closed_after = time.monotonic() - opened
        assert silent.recv(1) == b""
    assert HEAD_TIMEOUT_S - 1 <= closed_after <= HEAD_TIMEOUT_S + 5


def trickle_until_closed(sock: socket.socket, byte: bytes, *, every_s: float = 2.0) -> float:
    """Send ``byte`` every ``every_s`` until the server closes the connection; seconds it took
    (capped at three head timeouts, which fails the callers' bounds)."""
    started = time.monotonic()
    sock.settimeout(every_s)
    while time.monotonic() - started < 3 * HEAD_TIMEOUT_S:
        try:
            sock.sendall(byte)
            if sock.recv(65536) == b"":
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    return time.monotonic() - started


def test_trickled_bytes_after_a_request_do_not_keep_a_connection(gateway: GatewayProcess) -> None:
    """Found in review: stray CR/LF between requests (which httptools skips without starting a
    message) and the unread rest of an answered request's body each cancelled the keep-alive
    timer, so one byte every few seconds held a connection for ever. Both are now closed
    within the head timeout."""
    with connect(gateway) as between, connect(gateway) as body:
        between.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert parse(read_until_reply(between))[0] == 200
        # No key: answered 401 before the (never finished) body is read.
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json"
            b"\r\nContent-Length: 1000000\r\n\r\n{"
        )
        assert parse(read_until_reply(body))[0] == 401
        with ThreadPoolExecutor(2) as pool:
            crlf = pool.submit(trickle_until_closed, between, b"\r\n")
            trickled_body = pool.submit(trickle_until_closed, body, b" ")
            assert crlf.result() <= HEAD_TIMEOUT_S + 5
            assert trickled_body.result() <= HEAD_TIMEOUT_S + 5


def read_until_reply(sock: socket.socket) -> bytes:
    """One complete reply on a keep-alive connection (head and Content-Length body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    _, headers, body = parse(received)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        received += chunk
        body += chunk
    return received


def test_keep_alive_connections_idle_between_requests_still_work(
    gateway: GatewayProcess,
) -> None:
    """The head timer runs only while a head arrives: a connection idle for a while between
    two requests (within uvicorn's keep-alive) serves both."""
    with connect(gateway) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            assert parse(read_until_reply(sock))[0] == 200
            time.sleep(3)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert parse(read_until_reply(sock))[0] == 200


def test_pipelined_requests_in_one_write_are_all_served(gateway: GatewayProcess) -> None:
    """Heads counted per request: two requests arriving in one read are both answered."""
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
        first = read_until_reply(sock)
        _, headers, body = parse(first)
        rest = body[int(headers["content-length"]) :]
        if b"\r\n\r\n" not in rest:
            rest += read_until_reply(sock)
        assert parse(first)[0] == 200 and parse(rest)[0] == 200


def test_a_large_head_pipelined_behind_a_small_request_is_refused(gateway: GatewayProcess) -> None:
    """A head that starts in the same read as the end of the previous request is measured too:
    the first request is answered, then the connection closes (a 431 may follow the reply,
    never precede it)."""
    with connect(gateway) as sock:
        small = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
        large = b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
        sock.sendall(small + large)
        replies = read_reply(sock)
    assert replies.startswith(b"HTTP/1.1 200 "), replies[:100]
    assert replies.count(b"HTTP/1.1 200 ") == 1
    _, _, rest = replies.partition(b"HTTP/1.1 431")
    if rest:
        assert_431(b"HTTP/1.1 431" + rest)
