"""Benchmark: what the fusion engine adds on top of its upstream calls.

Starts the fake upstream in its own process (fixed delay per call), then runs fusions of a
3-member panel + judge in-process at several concurrencies. A fusion can be no faster than the
slowest member plus the judge (2 x delay), so ``overhead = latency - 2 x delay`` is what the
engine itself costs. Each configuration runs ``--repeats`` times; medians are quoted.

    python bench/bench_engine.py [--delay-ms 50] [--requests 200] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fusion_engine import FusionEngine, Panel, PanelMember
from fusion_engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_fake(delay_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    """The fake upstream in its own process, pinned to CPU 1 where taskset exists."""
    port = free_port()
    command = [sys.executable, "-m", "fusion_engine.testing.fake_upstream", "--port", str(port)]
    command += ["--delay-ms", str(delay_ms)]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        command = ["taskset", "-c", "1", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=1).close()
            return process, base_url
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the fake upstream did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    engine: FusionEngine, panel: Panel, requests: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(requests):
        queue.put_nowait(number)

    async def worker() -> None:
        while not queue.empty():
            number = queue.get_nowait()
            started = time.perf_counter()
            await engine.fuse(f"question {number}", panel=panel)
            latencies.append((time.perf_counter() - started) * 1000)

    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": requests / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "engine_cpu_ms_per_fusion": (time.process_time() - cpu_before) * 1000 / requests,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fake, base_url = start_fake(args.delay_ms)
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {0})
    settings = Settings.from_environ(
        {
            "OPENROUTER_API_KEY": "bench",
            "OPENROUTER_BASE_URL": base_url,
            "FUSION_PANELS_DIR": str(ROOT / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(ROOT / "config/gateway.yaml"),
        }
    )
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
        fake.terminate()
        fake.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
