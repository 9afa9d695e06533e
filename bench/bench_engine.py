"""Benchmark: what the fusion engine adds on top of its upstream calls.

Starts the fake upstream in its own process (fixed delay per call), then runs fusions of a
3-member panel + judge in-process at several concurrencies. A fusion can be no faster than the
slowest member plus the judge (2 x delay), so ``overhead = latency - 2 x delay`` is what the
engine itself costs. Each configuration runs ``--repeats`` times; medians are quoted.

    python bench/bench_engine.py [--delay-ms 50] [--requests 200] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from common import (
    closed_loop,
    cpu_seconds,
    engine_settings,
    percentile,
    run_benchmark,
    start_fake,
    stop,
)

from fusion_engine import FusionEngine, Panel, PanelMember


async def run_load(
    engine: FusionEngine, panel: Panel, requests: int, concurrency: int
) -> dict[str, float]:
    async def fuse(number: int) -> None:
        await engine.fuse(f"question {number}", panel=panel)

    cpu_before = time.process_time()
    elapsed, latencies = await closed_loop(fuse, requests, concurrency)
    return {
        "requests_per_s": requests / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "engine_cpu_ms_per_fusion": (time.process_time() - cpu_before) * 1000 / requests,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fake, base_url = start_fake(args.delay_ms, cpu=1)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    settings = engine_settings(base_url)
    panel = Panel(
        name="bench",
        models=[PanelMember(slug=f"bench/member-{i}") for i in range(3)],
        judge_model="bench/judge",
    )
    floor_ms = 2 * args.delay_ms
    results: dict[str, Any] = {"delay_ms": args.delay_ms, "floor_ms": floor_ms, "runs": {}}
    fake_cpu_start = cpu_seconds(fake.pid)
    try:
        async with FusionEngine(settings=settings) as engine:
            await run_load(engine, panel, 20, 5)  # warm-up: connections, caches
            for concurrency in args.concurrency:
                runs = [
                    await run_load(engine, panel, args.requests, concurrency)
                    for _ in range(args.repeats)
                ]
                median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                median["added_p50_ms"] = median["p50_ms"] - floor_ms
                median["added_p99_ms"] = median["p99_ms"] - floor_ms
                results["runs"][str(concurrency)] = median
                print(
                    f"concurrency {concurrency:>3}: {median['requests_per_s']:7.1f} fusions/s  "
                    f"p50 {median['p50_ms']:7.1f} ms  p99 {median['p99_ms']:7.1f} ms  "
                    f"added p50 {median['added_p50_ms']:5.2f} ms  "
                    f"p99 {median['added_p99_ms']:5.2f} ms  "
                    f"engine CPU {median['engine_cpu_ms_per_fusion']:.2f} ms/fusion"
                )
        results["fake_upstream_cpu_s"] = cpu_seconds(fake.pid) - fake_cpu_start
        print(f"fake upstream CPU: {results['fake_upstream_cpu_s']:.1f} s over the whole run")
    finally:
        stop(fake)
    return results


def main() -> None:
    run_benchmark(__doc__, main_async, requests=200)


if __name__ == "__main__":
    main()
