"""Shared pieces of the benchmarks: starting processes pinned to cores, load, percentiles."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import IO, Any

from fusion_engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(command: list[str], cpu: int) -> list[str]:
    """``command`` pinned to one CPU with taskset, when there is more than one CPU."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *command]
    return command


def wait_for(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``url`` answers 200, or fail if ``process`` died."""
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{what} did not start")


def start_fake(
    delay_ms: int, cpu: int = 1, *, stderr: IO[bytes] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """The fake upstream in its own process with a fixed delay per call.

    ``bench/peers/fake_server.py``: the project's fake with bounded request records (a long
    run's garbage collection over an unbounded list stalls it) and stamped first tokens.
    """
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "peers" / "fake_server.py")]
    command += ["--port", str(port), "--delay-ms", str(delay_ms)]
    process = subprocess.Popen(pinned(command, cpu), stdout=subprocess.DEVNULL, stderr=stderr)
    base_url = f"http://127.0.0.1:{port}/v1"
    wait_for(f"{base_url}/models", process, "the fake upstream")
    return process, base_url


def start_gateway(
    env: Mapping[str, str], cpu: int = 0, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """`fusion serve` in its own process."""
    port = free_port()
    full_env = {
        **os.environ,
        **env,
        "FUSION_PORT": str(port),
        "FUSION_HOST": "127.0.0.1",
        "FUSION_WORKERS": str(workers),
        "FUSION_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "fusion_engine.cli", "serve"]
    process = subprocess.Popen(
        pinned(command, cpu), env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_for(f"{base_url}/ready", process, "the gateway")
    return process, base_url


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate and reap a process."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[index]) for index in (11, 12, 13, 14)) / ticks


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (gunicorn master and workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                total += process_tree_cpu(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    call: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """Run ``requests`` calls with ``concurrency`` in flight; (elapsed s, latencies ms)."""
    latencies: list[float] = []
    numbers = iter(range(requests))

    async def worker() -> None:
        for number in numbers:
            started = time.perf_counter()
            await call(number)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def run_benchmark(
    doc: str | None,
    main_async: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    *,
    requests: int,
) -> None:
    """The shared command line of the benches: parse, run, optionally write JSON."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def engine_settings(base_url: str) -> Settings:
    """Settings for an in-process engine whose default provider is the fake at ``base_url``."""
    return Settings.from_environ(
        {
            "OPENROUTER_API_KEY": "bench",
            "OPENROUTER_BASE_URL": base_url,
            "FUSION_PANELS_DIR": str(ROOT / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
        }
    )
