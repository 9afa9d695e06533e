"""The gateway under load and faults: `bench/load_test.py` run for real, its summary checked.

Each test runs the load generator in a subprocess: `fusion serve` with two gunicorn workers,
the fake upstream (20 ms per call) and a private redis-server on a free port (never the shared
one), 200 closed-loop clients of mixed traffic. ``FUSION_LOAD_SECONDS`` sets the length of the
plain mixed run (default 20 s); the fault runs are shorter. The whole file takes about a
minute; docs/reliability.md has the 60 s figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import ROOT, GatewayProcess, wait_until

pytestmark = pytest.mark.load

LOAD_TEST = ROOT / "bench" / "load_test.py"
CONCURRENCY = 200
#: RSS growth allowed per worker between the first and the last third of the mixed run.
MEMORY_BOUND_MB = 30.0


def load_seconds() -> float:
    return float(os.environ.get("FUSION_LOAD_SECONDS", "20"))


def run_load(tmp_path: Path, *options: str, duration: float) -> dict[str, Any]:
    """Run bench/load_test.py with ``options`` and return its JSON summary."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI needs it: .ci/run installs it)")
        pytest.skip("redis-server is not installed")
    summary = tmp_path / "summary.json"
    command = [sys.executable, str(LOAD_TEST), "--duration", str(duration)]
    command += ["--concurrency", str(CONCURRENCY), *options, "--json", str(summary)]
    # Its own session, so a run that hangs can be ended with everything it started.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=duration + 90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the load test did not finish:\n{output}")
    assert process.returncode == 0, output
    print(output)  # the Markdown tables, shown by pytest when a test fails
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


def no_failures(summary: dict[str, Any]) -> None:
    failed = {name: t["errors"] for name, t in summary["kinds"].items() if t["failed"]}
    assert not failed, f"requests that should have succeeded failed: {failed}"


def test_mixed_load_has_no_failures_and_bounded_memory(tmp_path: Path) -> None:
    """200 clients of mixed traffic: every request succeeds and no worker grows by 30 MB."""
    summary = run_load(tmp_path, duration=load_seconds())
    no_failures(summary)
    assert summary["total"]["refused"] == 0
    kinds = summary["kinds"]
    assert set(kinds) == {"fused", "stream", "cached", "passthrough"}
    assert all(t["succeeded"] >= 20 for t in kinds.values()), kinds
    assert set(kinds["fused"]["cache"]) == {"bypass"}, "no-cache, no-store must really fuse"
    assert kinds["cached"]["cache"].get("hit", 0) > kinds["cached"]["cache"].get("miss", 0)
    memory = summary["memory"]
    assert len(memory["workers"]) == 2 and not memory["replaced_workers"]
    assert all(cpu > 0.5 for cpu in summary["cpu_s"]["workers"].values()), "both workers served"
    growth = {pid: w["growth_mb"] for pid, w in memory["workers"].items()}
    assert all(mb < MEMORY_BOUND_MB for mb in growth.values()), growth


def test_redis_killed_and_restarted_mid_load(tmp_path: Path) -> None:
    """Redis dies and comes back: no request fails, and cache hits come from Redis again."""
    summary = run_load(tmp_path, "--kill-redis-at", "5", "--restart-redis-at", "9", duration=15)
    no_failures(summary)
    assert summary["total"]["refused"] == 0
    phases = summary["redis"]["phases"]
    down, after = phases["redis_down"]["metric"], phases["after_restart"]["metric"]
    assert down.get("error", 0) > 0, "the kill was not felt"
    assert after.get("hit", 0) > 0
    # Timeouts under load may still count a few errors; Redis being away counts hundreds.
    assert after.get("error", 0) < 0.1 * down["error"], phases
    restarted = summary["redis"]["restarted_redis"]
    assert restarted["keys"] > 0 and restarted["keyspace_hits"] >= 50, restarted


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    """SIGTERM with 2 s fusions in flight: every accepted request ends with a 200."""
    summary = run_load(tmp_path, "--sigterm-at", "4", duration=10)
    no_failures(summary)
    drain = summary["sigterm"]
    in_flight = drain["in_flight_at_sigterm"]
    for kind in ("slow", "slow-stream"):
        assert in_flight[kind]["in_flight"] > 0
        assert in_flight[kind].get("ok", 0) == in_flight[kind]["in_flight"], in_flight
    # The slow member answers after 2 s: a request cut short by the shutdown would end sooner.
    assert drain["last_200_after_sigterm_s"] > 0
    assert drain["slow_in_flight_shortest_s"] >= 1.95, "the slow requests were not waited for"
    assert drain["gateway_exit_code"] == 0
    assert drain["drain_s"] < 120


def test_sigint_to_the_master_stops_the_gateway_quickly(tmp_path: Path) -> None:
    """SIGINT to the gunicorn master ends a two-worker gateway within 10 s."""
    gateway = GatewayProcess(
        {
            "OPENROUTER_API_KEY": "unused",
            "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1",
            "FUSION_PANELS_DIR": str(ROOT / "panels"),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
            "FUSION_CACHE": "memory",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        },
        workers=2,
    )
    master = gateway.process.pid
    children = Path(f"/proc/{master}/task/{master}/children")
    assert wait_until(lambda: len(children.read_text().split()) == 2, timeout_s=20)
    workers = [int(pid) for pid in children.read_text().split()]
    try:
        gateway.process.send_signal(signal.SIGINT)
        try:
            gateway.process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway still runs 10 s after SIGINT:\n{gateway.output()[-2000:]}")
    finally:
        # Our own workers first: killing only the master would leave them serving.
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        gateway.stop()
