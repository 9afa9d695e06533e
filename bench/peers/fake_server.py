"""The project's fake upstream for long benchmarks: same replies, bounded request records.

``fusion_engine.testing.fake_upstream`` keeps every request it received (for tests' asserts).
Over a benchmark of a million requests that list grows without bound and the garbage
collector's full passes over it stall the fake for tens of milliseconds, which then shows up as
everybody's p99 (measured: direct p99 at concurrency 1 of 41–95 ms after 30 000 requests,
instead of < 1 ms). Here the records keep only the last 100 entries; everything else is the
fake itself (``FakeUpstream``, ``Reply``), unchanged. Every stream's first content piece
carries the time it was sent (``stamp_first_token``), so the load generator can time how long a
server took to relay it.

    python bench/peers/fake_server.py --port 8089 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from collections import deque

from fusion_engine.testing.fake_upstream import FakeUpstream
from fusion_engine.testing.script import Reply

KEEP = 100


async def serve(host: str, port: int, delay_ms: float) -> None:
    fake = FakeUpstream(default_reply=Reply(delay_s=delay_ms / 1000), stamp_first_token=True)
    # Same interface (append, clear, iteration), bounded length.
    fake.received = deque(maxlen=KEEP)  # type: ignore[assignment]
    fake.cancelled = deque(maxlen=KEEP)  # type: ignore[assignment]
    fake.completed = deque(maxlen=KEEP)  # type: ignore[assignment]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fake.start(port=port, host=host)
    gc.freeze()  # what start-up allocated is never collected: shorter full passes
    print(fake.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # uvloop ships with uvicorn[standard]; plain asyncio otherwise
        asyncio.run(serve(args.host, args.port, args.delay_ms))
    else:
        uvloop.run(serve(args.host, args.port, args.delay_ms))


if __name__ == "__main__":
    main()
