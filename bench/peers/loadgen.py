"""A closed-loop HTTP load generator in its own process: aiohttp on uvloop, bounded in time.

``concurrency`` clients each send the same POST over their own keep-alive connection, one after
the other, until ``duration`` seconds have passed; requests still in flight then are awaited
and counted. For streamed replies it also times the first ``data:`` event (time to first token:
SSE comment lines such as keep-alives do not count) and, when the first token carries the bench
fake's ``[sent_ns=N]`` stamp, how long after the upstream sent it the token arrived here
(``relay_ms``: the hops through the server under test, on the machine-wide monotonic clock).
It prints one JSON object on stdout:

    {"requests", "elapsed_s", "latencies_ms": [...], "ttft_ms": [...], "relay_ms": [...],
     "errors": {...}}

``bench/bench_peers.py`` runs it (pinned to the load generator's core) for the streamed
workloads, and for every workload when wrk is not installed.

    python bench/peers/loadgen.py --url URL --body-file BODY.json --concurrency 10 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

from fusion_engine.testing.fake_upstream import stamped_ns

STAMP_SEARCH_BYTES = 16 * 1024


class FirstToken:
    """Watches a streamed reply for its first ``data:`` event (``first``, a perf_counter time)
    and for the fake's send stamp in it (``relay_ms``: arrival minus stamp)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.relay_ms: float | None = None
        self._seen = b""

    def feed(self, chunk: bytes) -> None:
        """Look at the next piece of the body as it arrives."""
        stamp_wanted = self.relay_ms is None and len(self._seen) < STAMP_SEARCH_BYTES
        if self.first is not None and not stamp_wanted:
            return
        arrived_ns, now = time.monotonic_ns(), time.perf_counter()
        # After the first event only the stamp is looked for, and only in the body's start.
        self._seen += chunk
        if self.first is None and (self._seen.startswith(b"data:") or b"\ndata:" in self._seen):
            self.first = now
        if stamp_wanted:
            sent = stamped_ns(self._seen.decode("utf-8", "replace"))
            if sent is not None:
                self.relay_ms = (arrived_ns - sent) / 1e6


async def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    duration: float,
    stream: bool,
) -> dict[str, object]:
    """Drive ``url`` for ``duration`` seconds with ``concurrency`` clients; the figures."""
    latencies: list[float] = []
    ttfts: list[float] = []
    relays: list[float] = []
    errors: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + duration

        async def client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                first: float | None = None
                try:
                    async with session.post(url, data=body, headers=headers) as reply:
                        if stream:
                            watch = FirstToken()
                            async for chunk in reply.content.iter_any():
                                watch.feed(chunk)
                            first, relayed = watch.first, watch.relay_ms
                        else:
                            await reply.read()
                        if reply.status != 200:
                            failed(f"http {reply.status}")
                            continue
                except (TimeoutError, aiohttp.ClientError) as error:
                    failed(type(error).__name__)
                    continue
                ended = time.perf_counter()
                latencies.append((ended - started) * 1000)
                if first is not None:
                    ttfts.append((first - started) * 1000)
                if stream and relayed is not None:
                    relays.append(relayed)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "latencies_ms": latencies,
        "ttft_ms": ttfts,
        "relay_ms": relays,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--stream", action="store_true", help="time the first data: event too")
    args = parser.parse_args()
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    work = run(
        args.url,
        args.body_file.read_bytes(),
        headers,
        concurrency=args.concurrency,
        duration=args.duration,
        stream=args.stream,
    )
    try:
        import uvloop
    except ImportError:  # uvloop ships with uvicorn[standard]; plain asyncio otherwise
        figures = asyncio.run(work)
    else:
        figures = uvloop.run(work)
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
