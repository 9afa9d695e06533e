"""Benchmark: the latency the gateway adds over its upstream calls, and fused requests/s.

Starts the fake upstream (fixed delay per call, its own process) and `fusion serve` (one
worker), then drives them from this process with aiohttp at several concurrencies:

- ``fused``: ``fusion/bench`` (3 members + judge). Its floor is two upstream calls (members in
  parallel, then the judge).
- ``fused-stream``: the same, streamed, timed to the last byte.
- ``passthrough``: a plain model through the gateway, against ``direct`` calls to the fake.
- ``cache-hit``: the fused request answered from the gateway's in-memory cache.

``added`` compares each workload with the same number of sequential ``direct`` calls at the same
concurrency, so the fake's own overhead is not charged to the gateway.

The gateway is pinned to CPU 0, the fake and this load generator to CPU 1. Every configuration
runs ``--repeats`` times; medians are reported.

    python bench/bench_gateway.py [--delay-ms 50] [--requests 300] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from common import (
    ROOT,
    closed_loop,
    cpu_seconds,
    percentile,
    process_tree_cpu,
    run_benchmark,
    start_fake,
    start_gateway,
    stop,
)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


ERRORS: dict[str, int] = {}


def caller(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    stream: bool,
    cached: bool = False,
) -> Callable[[int], Awaitable[None]]:
    """One request of a workload; a non-200 or a broken connection is counted as an error.

    Unless ``cached``, the request tells the gateway to neither read nor write its cache, so
    every request really fuses.
    """
    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    if not cached:
        headers["Cache-Control"] = "no-cache, no-store"

    async def call(_: int) -> None:
        try:
            async with session.post(url, data=payload, headers=headers) as reply:
                await reply.read()
                if reply.status != 200:
                    ERRORS[f"http {reply.status}"] = ERRORS.get(f"http {reply.status}", 0) + 1
        except aiohttp.ClientError as error:
            ERRORS[type(error).__name__] = ERRORS.get(type(error).__name__, 0) + 1

    return call


async def measure(
    call: Callable[[int], Awaitable[None]],
    requests: int,
    concurrency: int,
    repeats: int,
    gateway_pid: int | None,
) -> dict[str, float]:
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        cpu_before = process_tree_cpu(gateway_pid) if gateway_pid else 0.0
        elapsed, latencies = await closed_loop(call, requests, concurrency)
        cpu_after = process_tree_cpu(gateway_pid) if gateway_pid else 0.0
        runs.append(
            {
                "requests_per_s": requests / elapsed,
                "p50_ms": percentile(latencies, 0.50),
                "p90_ms": percentile(latencies, 0.90),
                "p99_ms": percentile(latencies, 0.99),
                "gateway_cpu_ms_per_request": (cpu_after - cpu_before) * 1000 / requests,
            }
        )
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fake, fake_url = start_fake(args.delay_ms, cpu=1)
    gateway, gateway_url = start_gateway(
        {
            "OPENROUTER_API_KEY": "bench",
            "OPENROUTER_BASE_URL": fake_url,
            "FUSION_SERVER_API_KEYS": "bench",
            "FUSION_PANELS_DIR": str(ROOT / "bench" / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
            "FUSION_CACHE": "memory",
        },
        cpu=0,
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    fused = {"model": "fusion/bench", "messages": PROMPT}
    single = {"model": "bench/single", "messages": PROMPT}
    results: dict[str, Any] = {"delay_ms": args.delay_ms, "workloads": {}}
    fake_cpu_start = cpu_seconds(fake.pid)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            chat_url = f"{gateway_url}/v1/chat/completions"
            direct = caller(session, f"{fake_url}/chat/completions", single, stream=False)
            workloads = {
                "direct": (direct, 1, None),
                "passthrough": (caller(session, chat_url, single, stream=False), 1, gateway.pid),
                "fused": (caller(session, chat_url, fused, stream=False), 2, gateway.pid),
                "fused-stream": (caller(session, chat_url, fused, stream=True), 2, gateway.pid),
                "cache-hit": (
                    caller(session, chat_url, {**fused, "seed": 1}, stream=False, cached=True),
                    0,
                    gateway.pid,
                ),
            }
            for call, _, _ in workloads.values():
                await closed_loop(call, 30, 5)  # warm-up: connections, caches
            for name, (call, rounds, pid) in workloads.items():
                for concurrency in args.concurrency:
                    figures = await measure(call, args.requests, concurrency, args.repeats, pid)
                    report(results, name, concurrency, figures, rounds)
        results["errors"] = dict(ERRORS)
        print(f"errors: {ERRORS or 'none'}")
        results["fake_upstream_cpu_s"] = cpu_seconds(fake.pid) - fake_cpu_start
        print(f"fake upstream CPU over the run: {results['fake_upstream_cpu_s']:.1f} s")
    finally:
        stop(gateway)
        stop(fake)
    return results


def report(
    results: dict[str, Any], name: str, concurrency: int, figures: dict[str, float], rounds: int
) -> None:
    """Record and print one configuration.

    ``added_*`` compares with ``rounds`` sequential upstream calls measured directly at the same
    concurrency (the fake's own overhead included), falling back to the bare delay for
    ``direct`` itself.
    """
    workloads = results["workloads"]
    floor = workloads.get("direct", {}).get(str(concurrency))
    for quantile in ("p50", "p99"):
        base = rounds * (floor[f"{quantile}_ms"] if floor else results["delay_ms"])
        figures[f"added_{quantile}_ms"] = figures[f"{quantile}_ms"] - base
    workloads.setdefault(name, {})[str(concurrency)] = figures
    print(
        f"{name:<13} c={concurrency:<3} {figures['requests_per_s']:7.1f} req/s  "
        f"p50 {figures['p50_ms']:6.1f}  p90 {figures['p90_ms']:6.1f}  "
        f"p99 {figures['p99_ms']:6.1f} ms  added p50 {figures['added_p50_ms']:5.2f}  "
        f"p99 {figures['added_p99_ms']:6.2f} ms  "
        f"gateway CPU {figures['gateway_cpu_ms_per_request']:.2f} ms/req"
    )


def main() -> None:
    run_benchmark(__doc__, main_async, requests=300)


if __name__ == "__main__":
    main()
