"""A scriptable fake of an OpenAI/OpenRouter-compatible upstream, for tests and benchmarks.

Each model slug gets a queue of :class:`~fusion_engine.testing.script.Reply` objects; every
chat request for that slug takes the next one, and the last one repeats once the queue runs dry.
The fake speaks OpenRouter's flavour of the OpenAI wire format (``gen-`` ids, ``usage.cost``, a
usage chunk with ``choices: []`` at the end of every stream, keep-alive comments, mid-stream
error events) and records what it received, what it finished and what the client abandoned.

Run it out of process with ``python -m fusion_engine.testing.fake_upstream --port 8089`` and
script it over HTTP through the ``/_fake/*`` control endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import re
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import yaml
from aiohttp import web

from fusion_engine.testing.script import (
    DEFAULT_PRICE,
    PROVIDER_NAME,
    Answer,
    ErrorShape,
    ReceivedRequest,
    Reply,
    conversation_text,
    load_script,
    parse_script,
    resolve_answer,
)
from fusion_engine.testing.wire_bodies import (
    completion_body,
    error_body,
    generation_id,
    model_entry,
    status_phrase,
    stream_deltas,
    stream_error_event,
)

__all__ = ["FakeUpstream", "main", "sent_stamp", "stamped_ns"]

KEEPALIVE_COMMENT: Final = b": OPENROUTER PROCESSING"
#: The length of a fake embedding when the request names no ``dimensions``.
EMBEDDING_DIMENSIONS: Final = 8
# Requests that are still running when the fake stops are cut off this quickly, so a test that
# leaves a `hang` reply behind does not wait for aiohttp's 60 s default.
_SHUTDOWN_TIMEOUT_S: Final = 0.1


_STAMP = re.compile(r"\[sent_ns=(\d+)\]")


def sent_stamp() -> str:
    """``[sent_ns=N]``: now on the system-wide monotonic clock, which every process shares."""
    return f"[sent_ns={time.monotonic_ns()}]"


def stamped_ns(text: str) -> int | None:
    """The time in a ``sent_stamp`` found in ``text``, if any."""
    found = _STAMP.search(text)
    return int(found.group(1)) if found else None


class _EventWriter:
    """Writes SSE events one ``write`` each, so the client really receives them one by one."""

    def __init__(
        self, response: web.StreamResponse, reply: Reply, encoder: msgspec.json.Encoder
    ) -> None:
        self._response = response
        self._newline = b"\r\n" if reply.crlf else b"\n"
        self._reply = reply
        self._encoder = encoder
        self._sent = 0

    async def send(self, payload: Mapping[str, Any] | bytes) -> None:
        """Send one ``data:`` event: a JSON object, or raw bytes such as ``[DONE]``."""
        if self._sent and self._reply.chunk_delay_s > 0:
            await asyncio.sleep(self._reply.chunk_delay_s)
        newline = self._newline
        if self._reply.comments:
            await self._response.write(KEEPALIVE_COMMENT + newline + newline)
        data = payload if isinstance(payload, bytes) else self._encoder.encode(payload)
        await self._response.write(b"data: " + data + newline + newline)
        self._sent += 1


class FakeUpstream:
    """A scriptable OpenAI/OpenRouter-compatible chat server on 127.0.0.1.

    Use it as an async context manager (``async with FakeUpstream() as fake``) or call
    :meth:`start` and :meth:`stop`. Unscripted models answer with ``default_reply``.

    Attributes:
        received: every chat request, in arrival order.
        cancelled: model slugs whose request the client abandoned before the reply was sent.
        completed: model slugs whose reply was sent as scripted (error replies and scripted
            stream cuts included).
        prices: USD per (prompt, completion) token by slug; others use ``DEFAULT_PRICE``.
    """

    def __init__(
        self,
        require_key: str | None = None,
        *,
        prices: Mapping[str, tuple[float, float]] | None = None,
        default_reply: Reply | None = None,
        stamp_first_token: bool = False,
    ) -> None:
        """Configure the fake; nothing is bound until :meth:`start`.

        Args:
            require_key: if set, chat requests need ``Authorization: Bearer <require_key>``.
            prices: USD per (prompt, completion) token for the listed slugs.
            default_reply: the reply for models without a script (default: ``Reply()``).
            stamp_first_token: prefix the first content piece of every streamed reply with
                the time it is sent (``sent_stamp``), so a client on the same machine can time
                the hops between (benchmarks: how long a gateway takes to relay it).
        """
        self.stamp_first_token = stamp_first_token
        self.require_key = require_key
        self.prices: dict[str, tuple[float, float]] = dict(prices or {})
        self.default_reply = default_reply if default_reply is not None else Reply()
        self.received: list[ReceivedRequest] = []
        self.cancelled: list[str] = []
        self.completed: list[str] = []
        self._pending: dict[str, deque[Reply]] = {}
        self._matching: dict[str, list[tuple[re.Pattern[str], Reply]]] = {}
        self._last: dict[str, Reply] = {}
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._stopping = False
        self._encoder = msgspec.json.Encoder()
        #: When set, ``GET /v1/models`` answers with this reply's error instead of the list.
        self.models_reply: Reply | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``; raises ``RuntimeError`` before :meth:`start`."""
        if self._base_url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._base_url

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> None:
        """Bind and serve; ``port=0`` picks a free port (read it back from :attr:`base_url`)."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        # Without handler cancellation aiohttp lets a handler sleep on after the client has
        # gone, and the fake could not tell that a request was abandoned.
        runner = web.AppRunner(
            self._make_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{url_host}:{bound_port}/v1"

    async def stop(self) -> None:
        """Stop serving; requests still running are cut off without being counted as cancelled."""
        if self._runner is None:
            return
        self._stopping = True
        try:
            await self._runner.cleanup()
        finally:
            self._runner = None
            self._base_url = None
            self._stopping = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def script(self, model: str, *replies: Reply) -> None:
        """Queue replies for ``model``; each request takes the next, the last one served repeats.

        Calling it again appends to the queue, so ``script(m, a)`` then ``script(m, b)`` serves
        ``a`` once and then ``b`` forever (unless ``a`` was already served and repeating).
        """
        self._pending.setdefault(model, deque()).extend(replies)

    def script_matching(self, model: str, pattern: str, reply: Reply) -> None:
        """Answer ``model`` with ``reply`` whenever the conversation's text matches ``pattern``.

        ``pattern`` is a regular expression searched in all message texts joined by newlines;
        matching rules are tried in the order they were added, before the queued replies, and
        are never used up. Lets a test give each question its own answer whatever the order
        in which concurrent requests arrive.
        """
        self._matching.setdefault(model, []).append((re.compile(pattern, re.DOTALL), reply))

    def requests_for(self, model: str) -> list[ReceivedRequest]:
        """Return the received chat requests for ``model``, in arrival order."""
        return [r for r in self.received if r.model == model]

    def reset(self) -> None:
        """Forget all scripts and records (prices and ``default_reply`` stay)."""
        self._pending.clear()
        self._matching.clear()
        self._last.clear()
        self.models_reply = None
        self.received.clear()
        self.cancelled.clear()
        self.completed.clear()

    def _next_reply(self, model: str, body: Mapping[str, Any]) -> Reply:
        rules = self._matching.get(model)
        if rules:
            text = conversation_text(body)
            for pattern, reply in rules:
                if pattern.search(text):
                    return reply
        queue = self._pending.get(model)
        if queue:
            reply = queue.popleft()
            self._last[model] = reply
            return reply
        return self._last.get(model, self.default_reply)

    # -- HTTP --------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # Benchmarks send long prompts; aiohttp's 1 MiB default would reject them.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_get("/_fake/state", self._control_state)
        app.router.add_post("/_fake/reset", self._control_reset)
        return app

    def _json_response(self, payload: Any, status: int = 200) -> web.Response:
        body = self._encoder.encode(payload)
        return web.Response(body=body, status=status, content_type="application/json")

    def _error_response(self, shape: ErrorShape, status: int, message: str) -> web.Response:
        body, is_html = error_body(shape, status, message)
        if is_html:
            return web.Response(text=body, status=status, content_type="text/html")
        return self._json_response(body, status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        raw = await request.read()
        try:
            body: Any = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        model = ""
        if isinstance(body, dict):
            model = body["model"] if isinstance(body.get("model"), str) else ""
            self.received.append(
                ReceivedRequest(
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    model=model,
                    stream=body.get("stream") is True,
                    received_at=arrived,
                )
            )
        expected_auth = f"Bearer {self.require_key}"
        if self.require_key is not None and request.headers.get("Authorization") != expected_auth:
            return self._error_response("openrouter", 401, "Missing or invalid API key")
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request: expected a JSON object."
            return self._error_response("openai", 400, message)
        if not model:
            return self._error_response("openai", 400, "you must provide a model parameter")
        return await self._serve(request, self._next_reply(model, body), model, body)

    async def _serve(
        self, request: web.Request, reply: Reply, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        try:
            if reply.delay_s > 0:
                await asyncio.sleep(reply.delay_s)
            if reply.hang:
                await asyncio.Event().wait()
            await self._respond(request, response, reply, model, body)
        except asyncio.CancelledError:
            self._record_abandoned(model)
            raise
        except ConnectionResetError:
            # Returning lets aiohttp finish quietly; its write_eof hits the closed transport
            # and is treated as a client disconnect.
            self._record_abandoned(model)
            return response
        self.completed.append(model)
        return response

    def _record_abandoned(self, model: str) -> None:
        if not self._stopping:
            self.cancelled.append(model)

    async def _respond(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reply: Reply,
        model: str,
        body: dict[str, Any],
    ) -> None:
        if reply.retry_after is not None:
            # float(): a scripted `retry_after=1` is an int, which has no is_integer() on 3.11.
            retry_after = float(reply.retry_after)
            text = str(int(retry_after)) if retry_after.is_integer() else str(retry_after)
            response.headers["Retry-After"] = text
        if reply.body is not None:
            raw = reply.body
            if isinstance(raw, str):
                await self._send_whole(request, response, reply, raw.encode(), "text/plain")
            else:
                payload = self._encoder.encode(raw)
                await self._send_whole(request, response, reply, payload, "application/json")
            return
        if reply.status != 200:
            message = (
                reply.error_message or f"{status_phrase(reply.status)} (fake upstream, {model})"
            )
            error, is_html = error_body(reply.error_shape, reply.status, message)
            if is_html:
                await self._send_whole(request, response, reply, error.encode(), "text/html")
            else:
                payload = self._encoder.encode(error)
                await self._send_whole(request, response, reply, payload, "application/json")
            return
        price = self.prices.get(model, DEFAULT_PRICE)
        answer = resolve_answer(reply, model, body, price)
        gen_id = generation_id()
        response.headers["X-Generation-Id"] = gen_id
        if body.get("stream") is True:
            await self._send_stream(request, response, reply, answer, model, gen_id)
            return
        payload = self._encoder.encode(completion_body(answer, model, gen_id))
        if reply.malformed:
            payload = payload[: len(payload) // 2]
        await self._send_whole(request, response, reply, payload, "application/json")

    async def _send_whole(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reply: Reply,
        payload: bytes,
        content_type: str,
    ) -> None:
        response.set_status(reply.status)
        response.content_type = content_type
        response.headers.update(reply.headers)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()

    async def _send_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reply: Reply,
        answer: Answer,
        model: str,
        gen_id: str,
    ) -> None:
        response.set_status(200)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        response.headers.update(reply.headers)
        await response.prepare(request)
        created = int(time.time())
        head = {"id": gen_id, "object": "chat.completion.chunk", "created": created}
        head |= {"model": model, "provider": PROVIDER_NAME}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            choice |= {"native_finish_reason": finish_reason, "logprobs": None}
            return {**head, "choices": [choice]}

        events = _EventWriter(response, reply, self._encoder)
        tool_only = answer.content is None
        await events.send(chunk({"role": "assistant", "content": None if tool_only else ""}))
        if reply.malformed:
            whole = self._encoder.encode(chunk({"content": answer.content or ""}))
            await events.send(whole[: len(whole) // 2])
            await response.write_eof()
            return

        deltas = stream_deltas(answer, reply.chunk_size)
        cut, failure = reply.cut_after_chunks, reply.stream_error_after_chunks
        stop_at = min((n for n in (cut, failure) if n is not None), default=len(deltas))
        stamp = self.stamp_first_token
        for delta in deltas[:stop_at]:
            if stamp and "content" in delta:
                delta = {**delta, "content": sent_stamp() + delta["content"]}
                stamp = False
            await events.send(chunk(delta))
        if cut is not None and cut == stop_at:
            # Closing the socket mid-body is what a crashed upstream or a dropped proxy looks
            # like: no finish chunk, no [DONE], an incomplete chunked body.
            if request.transport is not None:
                request.transport.close()
            return
        if failure is not None:
            message = reply.error_message or "Provider returned error"
            await events.send({**head, **stream_error_event(message)})
            await response.write_eof()
            return

        final = chunk({}, answer.finish_reason)
        if answer.choice_error is not None:
            final["choices"][0]["error"] = answer.choice_error
        await events.send(final)
        if answer.usage is not None:
            await events.send({**head, "choices": [], "usage": answer.usage})
        if not reply.no_done:
            await events.send(b"[DONE]")
        await response.write_eof()

    async def _models(self, request: web.Request) -> web.Response:
        failing = self.models_reply
        if failing is not None and failing.status != 200:
            message = failing.error_message or f"{status_phrase(failing.status)} (fake upstream)"
            return self._error_response(failing.error_shape, failing.status, message)
        models = list(dict.fromkeys([*self._pending, *self.prices]))
        data = [model_entry(slug, self.prices.get(slug, DEFAULT_PRICE)) for slug in models]
        listing = {"data": data, "links": {"next": None}, "total_count": len(data)}
        return self._json_response(listing)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's ``POST /v1/embeddings``: one deterministic vector per input, as floats or
        (``encoding_format: "base64"``, what openai-python asks for) little-endian float32s.

        A scripted reply for the model may make it fail (its status, or its raw ``body``) or
        wait (its delay)."""
        arrived = time.monotonic()
        try:
            body: Any = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(body, dict):
            self.received.append(
                ReceivedRequest(
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    model=model if isinstance(model, str) else "",
                    stream=False,
                    received_at=arrived,
                )
            )
        expected_auth = f"Bearer {self.require_key}"
        if self.require_key is not None and request.headers.get("Authorization") != expected_auth:
            return self._error_response("openai", 401, "Incorrect API key provided")
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request: expected a JSON object."
            return self._error_response("openai", 400, message)
        if not isinstance(model, str) or not model:
            return self._error_response("openai", 400, "you must provide a model parameter")
        inputs = _embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if inputs is None or not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
            return self._error_response("openai", 400, "'input' or 'dimensions' is invalid")
        reply = self._next_reply(model, body)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)
        if reply.body is not None:  # a scripted body is sent as it is, with the status
            if isinstance(reply.body, str):
                return web.Response(text=reply.body, status=reply.status)
            return self._json_response(reply.body, reply.status)
        if reply.status != 200:
            message = reply.error_message or f"{status_phrase(reply.status)} (fake, {model})"
            return self._error_response(reply.error_shape, reply.status, message)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _vector(text, dimensions, as_base64=as_base64),
            }
            for index, text in enumerate(inputs)
        ]
        tokens = sum(max(1, len(text.split())) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self.completed.append(model)
        return self._json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            scripts = parse_script(msgspec.json.decode(await request.read()))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._error_response("openai", 400, f"invalid script: {exc}")
        for slug, replies in scripts.items():
            self.script(slug, *replies)
        queued = {slug: len(self._pending[slug]) for slug in scripts}
        return self._json_response({"ok": True, "queued": queued})

    async def _control_requests(self, request: web.Request) -> web.Response:
        model = request.query.get("model")
        received = self.received if model is None else self.requests_for(model)
        return self._json_response(received)

    async def _control_state(self, request: web.Request) -> web.Response:
        state = {"received": self.received, "cancelled": self.cancelled}
        return self._json_response({**state, "completed": self.completed})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return self._json_response({"ok": True})


def _embedding_inputs(value: Any) -> list[str] | None:
    """The texts of an embeddings ``input`` (token ids stand for themselves), or ``None``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) for item in value):
        return [" ".join(map(str, value))]
    texts = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(token, int) for token in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


def _vector(text: str, dimensions: int, *, as_base64: bool) -> list[float] | str:
    """A unit vector that depends only on ``text``: floats, or float32s in base64."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    vector = [x / norm for x in raw]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return vector


async def _serve_forever(fake: FakeUpstream, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; Ctrl-C still ends asyncio.run there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await fake.start(port=port, host=host)
    try:
        print(fake.base_url, flush=True)
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake upstream until Ctrl-C or SIGTERM, printing its base URL on stdout.

    Returns:
        The process exit status: 0 after a clean stop, 2 for an unusable script file.
    """
    parser = argparse.ArgumentParser(
        prog="python -m fusion_engine.testing.fake_upstream",
        description="Serve a scriptable fake OpenAI/OpenRouter-compatible upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--script", help="YAML or JSON file: {model slug: [reply, ...]}")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="delay before answering unscripted models"
    )
    parser.add_argument("--require-key", help="API key clients must send as a Bearer token")
    parser.add_argument(
        "--stamp-first-token", action="store_true",
        help="prefix each stream's first content piece with [sent_ns=<monotonic ns>]",
    )  # fmt: skip
    args = parser.parse_args(argv)

    try:
        scripts = load_script(args.script) if args.script else {}
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        print(f"error: cannot load script {args.script}: {exc}", file=sys.stderr)
        return 2
    fake = FakeUpstream(
        require_key=args.require_key,
        default_reply=Reply(delay_s=args.delay_ms / 1000),
        stamp_first_token=args.stamp_first_token,
    )
    for slug, replies in scripts.items():
        fake.script(slug, *replies)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(fake, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
