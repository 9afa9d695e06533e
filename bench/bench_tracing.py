"""What OpenTelemetry tracing costs per request: the gateway's CPU with tracing off and on.

``bench/cpu_guard.py``'s measurement (the fake upstream at 0 ms, ``fusion serve`` with one worker
pinned to its own CPU, CPU of the gateway's process tree per request) on two gateways side by
side: one as the guard runs it (tracing off), one exporting every span over OTLP/HTTP
(``OTEL_EXPORTER_OTLP_ENDPOINT``) to a sink that discards them (``bench/peers/otlp_sink.py``,
on the load generator's CPU). The two take turns, one run each per round, so a slower stretch of
the machine weighs on both alike; medians over ``--repeats`` rounds. The exporter's thread runs
in the gateway, so its CPU (span encoding, HTTP posts) is counted. The sink counts the spans it
was sent, which shows tracing was on and whether the batch processor dropped any.

    python bench/bench_tracing.py                 # make bench-tracing (about 2 min)
    python bench/bench_tracing.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

# The bench folder's modules (on sys.path as this script's folder).
from bench_peers import (
    CLIENT_CPU,
    PEERS,
    WORKLOADS,
    Server,
    log_file,
    measure,
    start_fusion,
)
from common import free_port, pinned, start_fake, stop, wait_for

#: The workloads measured (names of ``bench_peers.WORKLOADS``).
MEASURED = ("passthrough", "fused", "fused-stream")
#: Spans each request of a workload makes (server, fusion, 3 members, judge; or server, chat).
SPANS_PER_REQUEST = {"passthrough": 2, "fused": 6, "fused-stream": 6}


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    """The discarding OTLP/HTTP sink on the load generator's CPU; (process, base URL)."""
    port = free_port()
    command = [sys.executable, str(PEERS / "otlp_sink.py"), "--port", str(port)]
    process = subprocess.Popen(
        pinned(command, CLIENT_CPU), stdout=subprocess.DEVNULL, stderr=log_file("otlp-sink")
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/stats", process, "the OTLP sink")
    return process, base


def sink_spans(base: str) -> int:
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as reply:
        spans: int = json.load(reply)["spans"]
        return spans


def run(args: argparse.Namespace) -> dict[str, Any]:
    fake, fake_url = start_fake(0, CLIENT_CPU, stderr=log_file("fake"))
    sink, sink_url = start_sink()
    servers: dict[str, Server] = {}
    try:
        servers["off"] = start_fusion(fake_url, 1, args.log_level)
        servers["on"] = start_fusion(
            fake_url, 1, args.log_level,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_SERVICE_NAME": "bench"},
        )  # fmt: skip
        spans_made = 0  # what the traced gateway's requests make, warm-up included
        for mode, server in servers.items():  # warm-up: connections, lazy imports
            for name in MEASURED:
                warm = measure(
                    server, WORKLOADS[name], 10, 1, client=args.client, fake_pid=fake.pid
                )
                spans_made += warm["requests"] * SPANS_PER_REQUEST[name] if mode == "on" else 0
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"off": [], "on": []} for name in MEASURED
        }
        for _ in range(args.repeats):
            for name in MEASURED:
                for mode in ("off", "on"):
                    figures = measure(
                        servers[mode], WORKLOADS[name], args.concurrency, args.duration,
                        client=args.client, fake_pid=fake.pid,
                    )  # fmt: skip
                    runs[name][mode].append(figures)
                    if mode == "on":
                        spans_made += figures["requests"] * SPANS_PER_REQUEST[name]
                    print(
                        f"{name:<13} tracing {mode:<3} {figures['requests_per_s']:8.1f} req/s  "
                        f"cpu {figures['cpu_ms_per_request']:.3f} ms/req",
                        flush=True,
                    )
        for server in servers.values():
            server.stop()  # the traced gateway flushes what it still holds
        servers.clear()
        spans_received = sink_spans(sink_url)
    finally:
        for server in servers.values():
            server.stop()
        stop(sink)
        stop(fake)
    report: dict[str, Any] = {
        "settings": {
            "workers": 1, "delay_ms": 0, "concurrency": args.concurrency,
            "duration_s": args.duration, "repeats": args.repeats, "client": args.client,
            "log_level": args.log_level,
        },
        "spans_made": spans_made,
        "spans_received": spans_received,
        "workloads": {},
    }  # fmt: skip
    for name, by_mode in runs.items():
        off = [run["cpu_ms_per_request"] for run in by_mode["off"]]
        on = [run["cpu_ms_per_request"] for run in by_mode["on"]]
        errors = sum(sum(run["errors"].values()) for mode in by_mode.values() for run in mode)
        report["workloads"][name] = {
            "cpu_ms_per_request_off": round(statistics.median(off), 4),
            "cpu_ms_per_request_on": round(statistics.median(on), 4),
            # Each round's off and on runs follow each other: the median of their differences.
            "added_cpu_ms_per_request": round(
                statistics.median(b - a for a, b in zip(off, on, strict=True)), 4
            ),
            "requests_per_s_off": median_rate(by_mode["off"]),
            "requests_per_s_on": median_rate(by_mode["on"]),
            "errors": errors,
        }  # fmt: skip
    return report


def median_rate(runs: list[dict[str, Any]]) -> float:
    return round(statistics.median(run["requests_per_s"] for run in runs), 1)


def table(report: dict[str, Any]) -> str:
    rows = [f"{'workload':<13} {'off ms':>8} {'on ms':>8} {'added ms':>9} {'added':>7}"]
    for name, figures in report["workloads"].items():
        off, on = figures["cpu_ms_per_request_off"], figures["cpu_ms_per_request_on"]
        added = figures["added_cpu_ms_per_request"]
        rows.append(f"{name:<13} {off:8.3f} {on:8.3f} {added:9.3f} {added / off:7.0%}")
    rows.append(
        f"spans: {report['spans_received']} received by the sink of {report['spans_made']} made"
    )
    return "gateway CPU per request, tracing off vs on (median over rounds)\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (median)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--log-level", default="info", help="the gateway's FUSION_LOG_LEVEL")
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
