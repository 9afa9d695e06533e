"""aiohttp client for OpenAI-compatible providers: chat, streamed chat, retries, costs.

One ``UpstreamClient`` holds one pooled ``aiohttp.ClientSession`` for every provider. Retries are
hand-written rather than taken from a retry library because they must fit inside a member's time
budget: a retry is skipped when ``Retry-After`` or the backoff would cross the remaining time.
Every failure leaves as an ``UpstreamError`` (status, provider message, retryable); the provider key
never appears in a message: every error leaving ``chat`` or ``stream`` is scrubbed here, whichever
path built it (an upstream's text can reach a message through msgspec's decode errors too).

Bodies are bounded: a non-streamed answer over ``MAX_ANSWER_BYTES`` (or the caller's bound) and a
streamed one whose events add up to more are that call's error, found without reading the rest.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import aiohttp
import aiohttp.http_exceptions
import msgspec
import structlog

from . import tracing
from .bounded_reads import (
    MAX_ANSWER_BYTES,
    MAX_ERROR_BODY_BYTES,
    BodyTooLargeError,
    mib,
    read_bounded,
)
from .config import Provider
from .errors import UpstreamError, UpstreamTimeoutError
from .protocol import ChatCompletion
from .provider_errors import RETRYABLE_STATUSES, error_from_body, redact, scrub_error
from .provider_requests import prepare_body, request_headers
from .sse import EventTooLargeError, iter_sse_batches
from .stream_events import StreamEvent, parse_batch
from .timing import Clock, RetryPolicy, SystemClock

log = structlog.get_logger("fusion_engine.upstream")
T = TypeVar("T")

#: A streamed event carrying a large tool call or an image must not break the stream.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class UpstreamReply(msgspec.Struct, frozen=True, kw_only=True):
    """A successful non-streaming call; ``raw`` is the body exactly as the provider sent it."""

    completion: ChatCompletion
    latency_ms: float
    attempts: int
    raw: bytes = b""
    #: Time spent waiting for a provider or model concurrency slot (part of ``latency_ms``).
    queue_ms: float = 0.0


_decode_completion = msgspec.json.Decoder(ChatCompletion).decode
_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


class UpstreamClient:
    """Calls OpenAI-compatible chat endpoints with pooling, timeouts and bounded retries.

    Args:
        session: an existing session to share; otherwise one is created on first use and closed
            by ``aclose``.
        retry: the retry policy.
        clock: time source for budgets and backoff sleeps.
        rand: source of jitter in [0, 1).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self.retry = retry or RetryPolicy()
        self.clock: Clock = clock or SystemClock()
        self._rand = rand or random.random
        self._limits: dict[str, asyncio.Semaphore] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Every member of every fusion usually goes to one host (the provider), and LLM calls
            # last seconds to minutes, so a per-host cap would queue fusions behind each other;
            # per-provider caps come from the config's max_concurrency instead.
            connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def chat(
        self,
        provider: Provider,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        max_body_bytes: int = MAX_ANSWER_BYTES,
    ) -> UpstreamReply:
        """One non-streaming chat completion, retried within ``timeout_s`` in total.

        Args:
            max_body_bytes: a longer answer is this call's error (not retried).

        Raises:
            UpstreamError: the call failed for good (``UpstreamTimeoutError`` when out of time).
            ProviderKeyMissingError: the provider's key variable is not set.
        """
        try:
            return await self._chat(provider, body, timeout_s, max_body_bytes)
        except UpstreamError as error:
            raise scrub_error(error, provider) from error.__cause__

    async def _chat(
        self, provider: Provider, body: Mapping[str, Any], timeout_s: float, max_body_bytes: int
    ) -> UpstreamReply:
        payload = _encode(prepare_body(provider, body, stream=False))
        headers = request_headers(provider)
        tracing.inject(headers)  # the call's chat span, when tracing is on
        started = self.clock.monotonic()

        async def attempt(slot: _Slot) -> tuple[ChatCompletion, bytes]:
            return await self._attempt_chat(provider, payload, headers, slot, max_body_bytes)

        (completion, raw), attempts, queued_s = await self._retried(
            provider, str(body.get("model", "")), started + timeout_s, attempt
        )
        tracing.note_response_model(completion.model)
        return UpstreamReply(
            completion=completion, latency_ms=(self.clock.monotonic() - started) * 1000,
            attempts=attempts, raw=raw, queue_ms=queued_s * 1000,
        )  # fmt: skip

    async def _retried(
        self,
        provider: Provider,
        model: str,
        deadline: float,
        attempt: Callable[[_Slot], Awaitable[T]],
    ) -> tuple[T, int, float]:
        """``attempt`` on a concurrency slot, retried until it succeeds or ``deadline``;
        with the number of attempts and the seconds spent queued for slots."""
        attempts = 0
        queued_s = 0.0
        while True:
            attempts += 1
            slot = await self._take_slot(provider, model, deadline)
            queued_s += slot.waited_s
            try:
                # One timeout around the whole attempt (send, status, body): a timer per step
                # was a measurable share of a call's CPU.
                return await self._within(deadline, attempt(slot)), attempts, queued_s
            except UpstreamError as error:
                # Idempotent; needed when the budget ran out before the attempt could start.
                slot.release()
                await self._wait_before_retry(provider, error, attempts, deadline)

    async def stream(
        self,
        provider: Provider,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        max_total_bytes: int | None = MAX_ANSWER_BYTES,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """Stream a chat completion's events as they arrive, in batches: the events each read
        from the network completed (one or more).

        Connecting is retried like ``chat``; once the first chunk has been yielded nothing is
        retried, and a mid-stream failure raises ``UpstreamError``.

        Args:
            max_total_bytes: the events' data together may not exceed this (``None``: only each
                event is bounded, for a relay that keeps nothing).
        """
        try:
            # aclosing: a consumer that leaves early must close the response now, not when
            # the event loop finalises the inner generator.
            async with aclosing(self._stream(provider, body, timeout_s, max_total_bytes)) as inner:
                noted = not tracing.active()
                async for events in inner:
                    if not noted and events:
                        tracing.note_response_model(events[0].chunk.model)
                        noted = True
                    yield events
        except UpstreamError as error:
            raise scrub_error(error, provider) from error.__cause__

    async def _stream(
        self,
        provider: Provider,
        body: Mapping[str, Any],
        timeout_s: float,
        max_total_bytes: int | None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        payload = _encode(prepare_body(provider, body, stream=True))
        headers = request_headers(provider)
        tracing.inject(headers)  # the call's chat span, when tracing is on
        model = str(body.get("model", ""))
        deadline = self.clock.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            slot = await self._take_slot(provider, model, deadline)
            try:
                response = await self._within(
                    deadline, self._open(provider, payload, headers, slot)
                )
            except UpstreamError as error:
                # Idempotent; needed when the budget ran out before the attempt could start.
                slot.release()
                await self._wait_before_retry(provider, error, attempt, deadline)
                continue
            break
        finished = False
        try:
            reading = self._read_events(provider, response, deadline, max_total_bytes)
            async with aclosing(reading):
                async for events in reading:
                    yield events
            finished = True
        except UpstreamError as error:
            error.attempts = attempt
            raise
        finally:
            if finished:
                # A stream read to its end leaves a reusable connection (aiohttp closes it
                # anyway if anything is left unread): no new TLS handshake per judge.
                response.release()
            else:
                # Closing drops the connection, which is what stops an upstream from
                # generating (and billing) when our consumer went away.
                response.close()
            slot.release()

    async def post(
        self,
        provider: Provider,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        max_body_bytes: int = MAX_ANSWER_BYTES,
    ) -> bytes:
        """One non-streaming ``POST <base_url><path>`` of ``body`` as given (an endpoint other
        than chat, such as ``/embeddings``), retried like ``chat`` within ``timeout_s``.

        Returns:
            The reply's body exactly as the provider sent it (a JSON object).

        Raises:
            UpstreamError: the call failed for good (``UpstreamTimeoutError`` when out of time).
            ProviderKeyMissingError: the provider's key variable is not set.
        """
        try:
            return await self._post(provider, path, body, timeout_s, max_body_bytes)
        except UpstreamError as error:
            raise scrub_error(error, provider) from error.__cause__

    async def _post(
        self,
        provider: Provider,
        path: str,
        body: Mapping[str, Any],
        timeout_s: float,
        max_body_bytes: int,
    ) -> bytes:
        payload = _encode(body)
        headers = request_headers(provider)
        tracing.inject(headers)  # the call's chat span, when tracing is on

        async def attempt(slot: _Slot) -> bytes:
            return await self._attempt_post(provider, payload, headers, slot, path, max_body_bytes)

        deadline = self.clock.monotonic() + timeout_s
        raw, _, _ = await self._retried(provider, str(body.get("model", "")), deadline, attempt)
        return raw

    async def _attempt_post(
        self,
        provider: Provider,
        payload: bytes,
        headers: Mapping[str, str],
        slot: _Slot,
        path: str,
        max_body_bytes: int,
    ) -> bytes:
        response = await self._open(provider, payload, headers, slot, path)
        raw = await _read_reply(provider, response, slot, max_body_bytes)
        try:
            decoded = _decode_any(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            decoded = None
        if not isinstance(decoded, dict):
            raise UpstreamError(
                f"{provider.name} sent a reply that is not a JSON object",
                status=200, kind="invalid_response",
            )  # fmt: skip
        return raw

    async def get_json(self, provider: Provider, path: str, *, timeout_s: float) -> Any:
        """One ``GET <base_url><path>`` on the shared session (read-only, not retried): its JSON.

        For the few reads besides chat (the eval harness asks a gateway for a panel), so no
        second HTTP client is needed anywhere.

        Raises:
            UpstreamError: a status other than 200 (``status`` set), a connection failure or a
                body that is not JSON.
            UpstreamTimeoutError: no whole reply within ``timeout_s``.
        """
        url = f"{provider.base_url}{path}"
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client().get(url, headers=request_headers(provider)) as response:
                    if response.status != 200:
                        raise UpstreamError(
                            f"{provider.name} answered {response.status} for GET {path}",
                            status=response.status, kind="http_error",
                        )  # fmt: skip
                    return msgspec.json.decode(await read_bounded(response, MAX_ANSWER_BYTES))
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"{provider.name}: GET {path} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"cannot reach {provider.name}: {type(exc).__name__}", kind="connection"
            ) from exc
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                f"{provider.name} sent no JSON for GET {path}", kind="invalid_response"
            ) from exc
        except BodyTooLargeError as exc:
            raise UpstreamError(
                f"{provider.name} sent over {mib(MAX_ANSWER_BYTES)} for GET {path}",
                kind="invalid_response",
            ) from exc

    async def _attempt_chat(
        self,
        provider: Provider,
        payload: bytes,
        headers: Mapping[str, str],
        slot: _Slot,
        max_body_bytes: int,
    ) -> tuple[ChatCompletion, bytes]:
        response = await self._open(provider, payload, headers, slot)
        raw = await _read_reply(provider, response, slot, max_body_bytes)
        try:
            completion = _decode_completion(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is the latter
            # msgspec's message quotes the offending value, which is upstream text (a provider
            # once echoed the Authorization header in a field): redacted, and not chained, so a
            # logged traceback cannot show it either.
            raise UpstreamError(
                f"{provider.name} sent a malformed response ({redact(str(exc), provider)})",
                status=200, kind="invalid_response",
            ) from None  # fmt: skip
        choice_error = completion.choices[0].error if completion.choices else None
        if choice_error is not None:
            status = choice_error.code if isinstance(choice_error.code, int) else 502
            raise UpstreamError(
                f"{provider.name}: {redact(choice_error.message, provider)}", status=status,
                retryable=status in RETRYABLE_STATUSES, kind="http_error",
            )  # fmt: skip
        if not completion.choices:
            raise UpstreamError(f"{provider.name} sent no choices", kind="invalid_response")
        return completion, raw

    async def _open(
        self,
        provider: Provider,
        payload: bytes,
        headers: Mapping[str, str],
        slot: _Slot,
        path: str = "/chat/completions",
    ) -> aiohttp.ClientResponse:
        """Send the request and return a 2xx response; on failure the slot is given back.

        Not timed here: the caller bounds the whole attempt.
        """
        url = f"{provider.base_url}{path}"
        try:
            response = await self._client().post(url, data=payload, headers=headers)
        except aiohttp.ClientError as exc:
            slot.release()
            raise UpstreamError(
                f"cannot reach {provider.name}: {type(exc).__name__}", retryable=True,
                kind="connection",
            ) from exc  # fmt: skip
        except BaseException:
            slot.release()
            raise
        if response.status >= 400:
            try:
                text = await read_bounded(response, MAX_ERROR_BODY_BYTES, cut=True)
            except aiohttp.ClientError as exc:
                raise _broken_off(provider, exc) from exc
            finally:
                # Releasing keeps a fully read connection for reuse (429 storms); one whose
                # body was cut short is closed by aiohttp.
                response.release()
                slot.release()
            raise error_from_body(provider, response.status, text, response.headers)
        return response

    async def _read_events(
        self,
        provider: Provider,
        response: aiohttp.ClientResponse,
        deadline: float,
        max_total_bytes: int | None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        finished = False
        total = 0
        # One timer for the whole stream rather than a timeout per read (a read is a few
        # bytes; per-read timeouts were a measurable share of the relay's CPU). When it fires
        # it closes the response, which ends the read below.
        expiry = _Expiry(response)
        timer = asyncio.get_running_loop().call_later(
            max(deadline - self.clock.monotonic(), 0.0), expiry.fire
        )
        batches = iter_sse_batches(response.content.iter_any(), max_line_bytes=MAX_EVENT_BYTES)
        try:
            async for batch in batches:
                events: list[StreamEvent] = []
                try:
                    done = parse_batch(provider, batch, events)
                except UpstreamError:
                    if events:  # what came before a malformed event still goes out
                        yield events
                    raise
                finished = finished or any(
                    choice.finish_reason for event in events for choice in event.chunk.choices
                )
                if max_total_bytes is not None:
                    total += sum(len(event.data) for event in events)
                    if total > max_total_bytes:
                        raise UpstreamError(
                            f"{provider.name} streamed an answer over {mib(max_total_bytes)}",
                            kind="invalid_response",
                        )
                if events:
                    yield events
                if done:
                    return
        except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            if expiry.fired:
                raise UpstreamTimeoutError("the stream ran out of time") from exc
            raise UpstreamError(
                f"{provider.name} stream broke off: {type(exc).__name__}", kind="connection"
            ) from exc
        except EventTooLargeError as exc:
            raise UpstreamError(
                f"{provider.name} sent a stream event over {MAX_EVENT_BYTES} bytes",
                kind="invalid_response",
            ) from exc
        finally:
            timer.cancel()
            # Closed here, not left to the event loop's finaliser (a task per stream).
            await batches.aclose()
        if expiry.fired:
            raise UpstreamTimeoutError("the stream ran out of time")
        if not finished:
            raise UpstreamError(
                f"{provider.name} stream ended before the answer was complete",
                kind="invalid_response",
            )

    async def _wait_before_retry(
        self, provider: Provider, error: UpstreamError, attempt: int, deadline: float
    ) -> None:
        """Sleep before the next attempt, or re-raise ``error`` when no retry fits."""
        remaining = deadline - self.clock.monotonic()
        error.attempts = attempt
        if not error.retryable or attempt >= self.retry.max_attempts:
            raise error
        delay = error.retry_after
        if delay is None:
            delay = self.retry.backoff(attempt - 1, self._rand())
        if delay >= remaining:
            error.retry_later = error.retry_after is not None
            raise error
        log.debug(
            "upstream_retry", provider=provider.name, attempt=attempt, delay_s=round(delay, 3),
            reason=error.kind, status=error.status,
        )  # fmt: skip
        await self.clock.sleep(delay)

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        remaining = deadline - self.clock.monotonic()
        if remaining <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise UpstreamTimeoutError("the call ran out of time")
        try:
            async with asyncio.timeout(remaining):
                return await awaitable
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"no answer within {remaining:.1f}s") from exc

    async def _take_slot(self, provider: Provider, model: str, deadline: float) -> _Slot:
        """Wait for the provider's and the model's concurrency limits (when set).

        The wait is measured, so queueing on a small local server is reported apart from the
        model's own latency.
        """
        if provider.max_concurrency is None and not provider.model_concurrency:
            return _Slot([], 0.0)
        limits = [(provider.name, provider.max_concurrency)]
        limits.append((f"{provider.name}/{model}", provider.model_concurrency.get(model)))
        semaphores = [self._limit(name, limit) for name, limit in limits if limit is not None]
        started = self.clock.monotonic()
        held: list[asyncio.Semaphore] = []
        try:
            for semaphore in semaphores:
                await self._within(deadline, semaphore.acquire())
                held.append(semaphore)
        except BaseException:
            for semaphore in held:
                semaphore.release()
            raise
        return _Slot(held, self.clock.monotonic() - started)

    def _limit(self, name: str, limit: int) -> asyncio.Semaphore:
        """The semaphore for ``name``, made on first use."""
        semaphore = self._limits.get(name)
        if semaphore is None:
            semaphore = self._limits[name] = asyncio.Semaphore(limit)
        return semaphore


class _Slot:
    """Concurrency permits held by one attempt; released exactly once."""

    def __init__(self, semaphores: list[asyncio.Semaphore], waited_s: float) -> None:
        self._semaphores = semaphores
        self.waited_s = waited_s

    def release(self) -> None:
        for semaphore in self._semaphores:
            semaphore.release()
        self._semaphores = []


class _Expiry:
    """Closes a streamed response when its time budget runs out, and remembers that it did."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self._response.close()


async def _read_reply(
    provider: Provider, response: aiohttp.ClientResponse, slot: _Slot, max_body_bytes: int
) -> bytes:
    """A 2xx reply's body, at most ``max_body_bytes``; the connection and the slot are given
    back whatever happens.

    Raises:
        UpstreamError: the body broke off (retryable) or is over the bound (not retryable).
    """
    try:
        raw = await read_bounded(response, max_body_bytes)
    except aiohttp.ClientError as exc:
        response.release()
        raise _broken_off(provider, exc) from exc
    except BodyTooLargeError:
        # Closing drops the connection: the rest of the body is never read.
        response.close()
        raise UpstreamError(
            f"{provider.name} sent an answer over {mib(max_body_bytes)}",
            kind="invalid_response",
        ) from None
    else:
        response.release()
    finally:
        slot.release()
    return raw


def _broken_off(provider: Provider, exc: BaseException) -> UpstreamError:
    """A response body that broke off while being read: worth another attempt."""
    return UpstreamError(
        f"{provider.name} response broke off: {type(exc).__name__}", retryable=True,
        kind="connection",
    )  # fmt: skip
