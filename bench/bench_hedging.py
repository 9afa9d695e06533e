"""Benchmark: a straggler member with and without a deadline.

Two members answer in ``--delay-ms``, the third in ten times that. Without a deadline every
fusion waits for the straggler; with ``deadline_s`` just above the fast members' time and
``min_responses: 2`` the straggler is cancelled and the judge starts at once. Reports p50/p99
fused latency of both, medians over ``--repeats`` runs.

    python bench/bench_hedging.py [--delay-ms 50] [--requests 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import urllib.request
from typing import Any

from common import closed_loop, engine_settings, percentile, run_benchmark, start_fake, stop

from fusion_engine import FusionEngine, Panel, PanelMember

FAST = ("hedge/fast-1", "hedge/fast-2")
SLOW = "hedge/slow"


def script_fake(base_url: str, delay_ms: int) -> None:
    """Fast members at the delay, the straggler at ten times it, the judge at the delay."""
    delay = delay_ms / 1000
    replies = {slug: [{"text": "42", "delay_s": delay}] for slug in (*FAST, "hedge/judge")}
    replies[SLOW] = [{"text": "42", "delay_s": 10 * delay}]
    request = urllib.request.Request(
        f"{base_url.removesuffix('/v1')}/_fake/script",
        data=json.dumps(replies).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def panel(deadline_s: float | None) -> Panel:
    return Panel(
        name="hedged" if deadline_s else "patient",
        models=[PanelMember(slug=slug) for slug in (*FAST, SLOW)],
        judge_model="hedge/judge",
        deadline_s=deadline_s,
        min_responses=2,
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fake, base_url = start_fake(0, cpu=1)
    script_fake(base_url, args.delay_ms)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    settings = engine_settings(base_url)
    results: dict[str, Any] = {"delay_ms": args.delay_ms, "straggler_ms": 10 * args.delay_ms}
    try:
        async with FusionEngine(settings=settings) as engine:
            for label, deadline in (
                ("no deadline", None),
                ("deadline", 1.5 * args.delay_ms / 1000),
            ):
                chosen = panel(deadline)

                async def fuse(number: int, chosen: Panel = chosen) -> None:
                    await engine.fuse(f"question {number}", panel=chosen)

                for concurrency in args.concurrency:
                    runs = []
                    for _ in range(args.repeats):
                        _, latencies = await closed_loop(fuse, args.requests, concurrency)
                        runs.append((percentile(latencies, 0.5), percentile(latencies, 0.99)))
                    p50 = statistics.median(r[0] for r in runs)
                    p99 = statistics.median(r[1] for r in runs)
                    results[f"{label} c={concurrency}"] = {"p50_ms": p50, "p99_ms": p99}
                    print(f"{label:<12} c={concurrency:<3} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    finally:
        stop(fake)
    return results


def main() -> None:
    run_benchmark(__doc__, main_async, requests=100)


if __name__ == "__main__":
    main()
