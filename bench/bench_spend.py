"""What spend accounting and budgets cost per request: the gateway's CPU with and without them.

``bench/cpu_guard.py``'s measurement (the fake upstream at 0 ms, ``fusion serve`` with one worker
pinned to its own CPU, CPU of the gateway's process tree per request) on gateways side by side:

- ``charged``: as the guard runs it. Every request's calls are charged to its key name (the
  bench key, no budget), in memory: what every request pays now.
- ``budget``: the key in the YAML's ``keys:`` with a budget (too large to refuse anything), in
  memory: each request also estimates its cost and holds it.
- ``charged-redis``: ``charged`` with ``REDIS_URL``: one Lua script a request writes the charge.
- ``budget-redis``: ``budget`` with ``REDIS_URL``: the hold and the charge are a Lua script
  each on the shared Redis (database 15): two round trips a request.
- ``before`` (with ``--before-src``): the same command on an older checkout's ``src`` (e.g. the
  commit before spend accounting), to show what the accounting itself adds.

The gateways take turns, one run each per round, so a slower stretch of the machine weighs on
all alike; medians over ``--repeats`` rounds.

    python bench/bench_spend.py                                  # make bench-spend (about 3 min)
    python bench/bench_spend.py --before-src /path/to/old/src --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

# The bench folder's modules (on sys.path as this script's folder).
from bench_peers import CLIENT_CPU, ROOT, WORKLOADS, Server, log_file, measure, start_fusion
from common import start_fake, stop

#: The workloads measured (names of ``bench_peers.WORKLOADS``).
MEASURED = ("passthrough", "fused")
#: The bench's own key (``bench_peers.start_fusion`` sends it as a bearer key).
BENCH_KEY = "bench"
REDIS_URL = "redis://127.0.0.1:6379/15"


def budget_config(folder: Path) -> Path:
    """The shipped gateway config with the bench key named, budgeted and never refused."""
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    config = folder / "gateway.yaml"
    shipped = (ROOT / "config" / "gateway.yaml").read_text().replace("keys: []\n", "")
    config.write_text(
        shipped
        + "\nkeys:\n  - name: bench-budget\n"
        + f"    key_sha256: {digest}\n    budget_usd: {{limit: 1000000000, per: total}}\n"
    )
    return config


def before_config(folder: Path) -> Path:
    """The shipped gateway config without the sections an older checkout does not know."""
    shipped = (ROOT / "config" / "gateway.yaml").read_text()
    config = folder / "before.yaml"
    config.write_text(shipped.split("\n# Named callers")[0] + "\n")
    return config


def run(args: argparse.Namespace) -> dict[str, Any]:
    fake, fake_url = start_fake(0, CLIENT_CPU, stderr=log_file("fake"))
    servers: dict[str, Server] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-spend-"))
    budgeted = {"FUSION_SERVER_API_KEYS": "", "FUSION_CONFIG": str(budget_config(folder))}
    try:
        if args.before_src is not None:
            servers["before"] = start_fusion(
                fake_url, 1, args.log_level,
                {"PYTHONPATH": str(args.before_src), "FUSION_CONFIG": str(before_config(folder))},
            )  # fmt: skip
        servers["charged"] = start_fusion(fake_url, 1, args.log_level)
        servers["charged-redis"] = start_fusion(
            fake_url, 1, args.log_level, {"REDIS_URL": REDIS_URL}
        )
        servers["budget"] = start_fusion(fake_url, 1, args.log_level, budgeted)
        servers["budget-redis"] = start_fusion(
            fake_url, 1, args.log_level, {**budgeted, "REDIS_URL": REDIS_URL}
        )
        for server in servers.values():  # warm-up: connections, lazy imports, learnt prices
            for name in MEASURED:
                measure(server, WORKLOADS[name], 10, 1, client=args.client, fake_pid=fake.pid)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {mode: [] for mode in servers} for name in MEASURED
        }
        for _ in range(args.repeats):
            for name in MEASURED:
                for mode, server in servers.items():
                    figures = measure(
                        server, WORKLOADS[name], args.concurrency, args.duration,
                        client=args.client, fake_pid=fake.pid,
                    )  # fmt: skip
                    runs[name][mode].append(figures)
                    print(
                        f"{name:<12} {mode:<13} {figures['requests_per_s']:8.1f} req/s  "
                        f"cpu {figures['cpu_ms_per_request']:.3f} ms/req",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
        stop(fake)
        shutil.rmtree(folder, ignore_errors=True)
    report: dict[str, Any] = {
        "settings": {
            "workers": 1, "delay_ms": 0, "concurrency": args.concurrency,
            "duration_s": args.duration, "repeats": args.repeats, "client": args.client,
            "before_src": str(args.before_src) if args.before_src else None,
        },
        "workloads": {},
    }  # fmt: skip
    for name, by_mode in runs.items():
        cpu = {
            mode: [run["cpu_ms_per_request"] for run in runs_] for mode, runs_ in by_mode.items()
        }
        base = cpu["charged"]
        report["workloads"][name] = {
            "cpu_ms_per_request": {m: round(statistics.median(v), 4) for m, v in cpu.items()},
            # Each round's runs follow each other: the median of their differences to charged.
            "added_vs_charged_ms": {
                mode: round(statistics.median(b - a for a, b in zip(base, values, strict=True)), 4)
                for mode, values in cpu.items()
                if mode != "charged"
            },
            "errors": sum(sum(r["errors"].values()) for mode in by_mode.values() for r in mode),
        }
    return report


def table(report: dict[str, Any]) -> str:
    rows = []
    for name, figures in report["workloads"].items():
        cpu = figures["cpu_ms_per_request"]
        added = figures["added_vs_charged_ms"]
        for mode, value in cpu.items():
            extra = f"  ({added[mode]:+.3f} ms vs charged)" if mode in added else ""
            rows.append(f"{name:<12} {mode:<13} {value:7.3f} ms/req{extra}")
    return "gateway CPU per request (median over rounds)\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (median)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--log-level", default="info", help="the gateway's FUSION_LOG_LEVEL")
    parser.add_argument("--before-src", type=Path, help="an older checkout's src to compare")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "aiohttp"
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})  # as cpu_guard: the gateways have SERVER_CPU
    report = run(args)
    print(table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
