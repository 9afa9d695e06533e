"""Benchmark: Fusion Engine side by side with the direct upstream, a bare-proxy floor and LiteLLM.

One run, one machine, one fake upstream (fixed delay per call), one load generator:

- ``direct``: the load generator calls the fake upstream itself (no hop).
- ``floor``: ``bench/peers/floor_proxy.py``, a bare aiohttp + uvloop pass-through: the least
  any Python hop costs.
- ``fusion-1w`` / ``fusion-2w``: ``fusion serve`` (gunicorn + uvicorn workers) with 1 and 2
  workers, the in-memory cache, auth on, production log level (``info``, JSON lines).
- ``litellm`` (with ``--peer litellm``): LiteLLM's proxy with one ``openai/...`` model pointing
  at the same fake, installed by this script into its own virtual environment outside the
  repository (``~/.cache/fusion-engine/peers/litellm-venv``): a benchmark peer, never a
  dependency of the project.

Workloads: ``passthrough`` (the only thing every server can do), ``passthrough-stream`` (time to
first token), ``fused`` (``fusion/bench``: 3 members + judge), ``fused-stream`` and
``cache-hit`` (ours only). The load generator is wrk (Debian's) when installed, else
``bench/peers/loadgen.py`` (aiohttp, its own process); streamed workloads always use the latter,
which times the first ``data:`` event. Closed loop at each concurrency, bounded by
``--duration`` seconds; every configuration runs ``--repeats`` times and medians are quoted.

Pinning: the server under test on CPU 0; the fake upstream, the load generator and this script
on CPU 1. CPU per request is the server's whole process tree (gunicorn master and all workers)
over the run, from /proc; the fake's own CPU is reported beside it.

"added" latency: the server's latency minus the direct latency at the same concurrency and
quantile; for fused requests minus twice it (the members run in parallel, then the judge); for
a streamed fused reply's first token, minus one direct call plus the direct time to first token.

    python bench/bench_peers.py --peer litellm --json bench/peers/results.json \\
        --update-doc docs/benchmarks.md
    python bench/bench_peers.py --profile 20 --profile-only   # py-spy on a worker, fused load
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import operator
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    cpu_seconds,
    free_port,
    percentile,
    pinned,
    process_tree_cpu,
    start_fake,
    stop,
    wait_for,
)

BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
PEER_HOME = Path(
    os.environ.get("FUSION_BENCH_PEERS_DIR", Path.home() / ".cache" / "fusion-engine" / "peers")
)
SERVER_CPU, CLIENT_CPU = 0, 1
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
SINGLE = {"model": "bench/single", "messages": PROMPT}
FUSED = {"model": "fusion/bench", "messages": PROMPT}
#: The same question on the Responses and Messages APIs (translated to and from chat completions).
RESPONSES_SINGLE = {"model": "bench/single", "input": PROMPT[0]["content"]}
RESPONSES_FUSED = {**RESPONSES_SINGLE, "model": "fusion/bench"}
MESSAGES_SINGLE = {"model": "bench/single", "max_tokens": 256, "messages": PROMPT}
MESSAGES_FUSED = {**MESSAGES_SINGLE, "model": "fusion/bench"}
DOC_BEGIN, DOC_END = "<!-- bench-peers:begin -->", "<!-- bench-peers:end -->"


@dataclass(frozen=True)
class Workload:
    """One kind of request, and how its "added" latency is computed."""

    name: str
    body: dict[str, Any]
    stream: bool = False
    #: Whether the gateway's cache may answer (else ``Cache-Control: no-cache, no-store``).
    cached: bool = False
    #: How many sequential direct calls make this request's floor (0: none, e.g. a cache hit).
    rounds: int = 1
    #: The API's path under ``/v1/``.
    path: str = "chat/completions"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("passthrough", SINGLE),
        Workload("passthrough-stream", {**SINGLE, "stream": True}, stream=True),
        Workload("fused", FUSED, rounds=2),
        Workload("fused-stream", {**FUSED, "stream": True}, stream=True, rounds=2),
        Workload("cache-hit", {**FUSED, "seed": 1}, cached=True, rounds=0),  # seeded: cacheable
        Workload("responses-passthrough", RESPONSES_SINGLE, path="responses"),
        Workload("responses-fused", RESPONSES_FUSED, rounds=2, path="responses"),
        Workload("messages-passthrough", MESSAGES_SINGLE, path="messages"),
        Workload("messages-fused", MESSAGES_FUSED, rounds=2, path="messages"),
    )
}
#: Which workloads each server runs (cache-hit only at the first delay: no upstream involved).
PLAN = {
    "direct": ["passthrough", "passthrough-stream"],
    "floor": ["passthrough", "passthrough-stream"],
    "fusion-1w": ["passthrough", "passthrough-stream", "fused", "fused-stream", "cache-hit"],
    "fusion-2w": ["passthrough", "fused", "fused-stream", "cache-hit"],
    "litellm": ["passthrough", "passthrough-stream"],
}


@dataclass
class Server:
    """A server under test: where to send requests, and its process (none for ``direct``)."""

    name: str
    chat_url: str
    headers: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    cleanup: list[Path] = field(default_factory=list)

    def url(self, workload: Workload) -> str:
        """Where ``workload``'s requests go on this server."""
        return self.chat_url.removesuffix("chat/completions") + workload.path

    def cpu(self) -> float:
        """CPU seconds of the whole process tree so far."""
        return process_tree_cpu(self.process.pid) if self.process else 0.0

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children of a gunicorn master, or itself."""
        if self.process is None:
            return []
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        found = [int(child) for child in children.read_text().split()] if children.exists() else []
        return found or [pid]

    def peak_rss_mib(self) -> float | None:
        """The highest peak RSS (VmHWM) of any worker so far."""
        peaks = [peak_rss_mib(pid) for pid in self.worker_pids()]
        return max(peaks) if peaks else None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- starting the servers ------------------------------------------------------------------------

_LOGS: list[Path] = []


def log_file(name: str) -> Any:
    """A file for a server's stderr, in one temporary folder per run (kept for reading)."""
    if not _LOGS:
        _LOGS.append(Path(tempfile.mkdtemp(prefix="bench-peers-logs-")))
        print(f"server logs: {_LOGS[0]}", flush=True)
    return (_LOGS[0] / f"{name}-{time.monotonic_ns()}.log").open("wb")


def start_floor(fake_url: str) -> Server:
    port = free_port()
    command = [sys.executable, str(PEERS / "floor_proxy.py"), "--port", str(port)]
    command += ["--upstream", fake_url]
    process = subprocess.Popen(
        pinned(command, SERVER_CPU), stdout=subprocess.DEVNULL, stderr=log_file("floor")
    )
    wait_for(f"http://127.0.0.1:{port}/health", process, "the floor proxy")
    return Server("floor", f"http://127.0.0.1:{port}/v1/chat/completions", {}, process)


def start_fusion(
    fake_url: str, workers: int, log_level: str, extra_env: Mapping[str, str] | None = None
) -> Server:
    """``fusion serve`` on the fake; ``extra_env`` added last (e.g. an OTLP endpoint)."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        # OTEL_: tracing is on only where a run asks for it (bench/bench_tracing.py).
        if not key.startswith(("FUSION_", "REDIS_", "OPENROUTER_", "PROMETHEUS_", "OTEL_"))
    }
    env |= {
        "OPENROUTER_API_KEY": "bench",
        "OPENROUTER_BASE_URL": fake_url,
        "FUSION_SERVER_API_KEYS": "bench",
        "FUSION_PANELS_DIR": str(BENCH / "panels"),
        "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
        "FUSION_CACHE": "memory",
        "FUSION_HOST": "127.0.0.1",
        "FUSION_PORT": str(port),
        "FUSION_WORKERS": str(workers),
        "FUSION_LOG_LEVEL": log_level,
        "FUSION_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "fusion_engine.cli", "serve"]
    process = subprocess.Popen(
        pinned(command, SERVER_CPU),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_file(f"fusion-{workers}w"),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/ready", process, "the gateway")
    server = Server(f"fusion-{workers}w", f"{base}/v1/chat/completions", {}, process)
    server.headers["Authorization"] = "Bearer bench"
    deadline = time.monotonic() + 30
    while len(server.worker_pids()) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
    return server


class PeerUnavailable(Exception):
    """A peer could not be installed or started (the run goes on without it)."""


def ensure_litellm(spec: str) -> tuple[Path, str]:
    """LiteLLM's proxy in its own virtual environment (created on first use); (venv, version)."""
    venv = PEER_HOME / "litellm-venv"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        print(f"installing {spec} into {venv} (once)", flush=True)
        PEER_HOME.mkdir(parents=True, exist_ok=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        steps = [
            [base_python, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", spec],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise PeerUnavailable(f"`{' '.join(step)}` failed: {done.stderr[-2000:]}")
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    if version.returncode != 0:
        raise PeerUnavailable(f"litellm is not importable in {venv}: {version.stderr[-2000:]}")
    return venv, version.stdout.strip()


def start_litellm(venv: Path, fake_url: str) -> Server:
    """LiteLLM's proxy, one worker, one model (``bench/single``) pointing at the fake."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
    config = workdir / "config.yaml"
    template = (PEERS / "litellm_config.yaml").read_text()
    config.write_text(template.replace("{FAKE_BASE_URL}", fake_url))
    master_key = f"sk-{secrets.token_hex(32)}"  # LiteLLM refuses to start open or weakly keyed
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the network
        "LITELLM_LOG": "ERROR",
    }
    command = [str(venv / "bin" / "litellm"), "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log = (workdir / "litellm.log").open("wb")
    process = subprocess.Popen(
        pinned(command, SERVER_CPU), env=env, cwd=workdir, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health/liveliness", process, "LiteLLM's proxy")
    except SystemExit as exc:
        tail = (workdir / "litellm.log").read_text(errors="replace")[-2000:]
        raise PeerUnavailable(f"{exc}: {tail}") from exc
    headers = {"Authorization": f"Bearer {master_key}"}
    return Server("litellm", f"{base}/v1/chat/completions", headers, process, [workdir])


# --- load ----------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """A Lua long-bracket literal holding ``text``."""
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {lua_string(body.decode())}\n")
        for name, value in headers.items():
            script.write(f"wrk.headers[ {lua_string(name)} ] = {lua_string(value)}\n")
        script.write(WRK_DONE)
    try:
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "60s"]
        command += ["-s", script.name, url]
        done = subprocess.run(
            pinned(command, CLIENT_CPU), capture_output=True, text=True, timeout=duration + 90
        )
    finally:
        os.unlink(script.name)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    raw = json.loads(lines[-1])
    errors = {kind: raw[kind] for kind in ("connect", "read", "write", "timeout") if raw[kind]}
    if raw["status"]:
        errors["non-2xx"] = raw["status"]
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": errors,
    }


def run_loadgen(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: int,
    stream: bool,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as file:
        file.write(body)
    try:
        command = [sys.executable, str(PEERS / "loadgen.py"), "--url", url]
        command += ["--body-file", file.name, "--concurrency", str(concurrency)]
        command += ["--duration", str(duration)]
        command += [
            arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")
        ]
        if stream:
            command.append("--stream")
        done = subprocess.run(
            pinned(command, CLIENT_CPU), capture_output=True, text=True, timeout=duration + 150
        )
    finally:
        os.unlink(file.name)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr[-3000:]}")
    raw = json.loads(done.stdout)
    latencies: list[float] = raw["latencies_ms"] or [float("nan")]
    figures: dict[str, Any] = {
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / raw["elapsed_s"],
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "errors": raw["errors"],
    }
    if stream and raw["ttft_ms"]:
        figures["ttft_p50_ms"] = percentile(raw["ttft_ms"], 0.50)
        figures["ttft_p99_ms"] = percentile(raw["ttft_ms"], 0.99)
    if stream and raw.get("relay_ms"):
        # From the fake's send of the (judge's) first token to its arrival at the client.
        figures["relay_p50_ms"] = percentile(raw["relay_ms"], 0.50)
        figures["relay_p99_ms"] = percentile(raw["relay_ms"], 0.99)
    return figures


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine, all cores, outside idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this script's reaped children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Server,
    workload: Workload,
    concurrency: int,
    duration: int,
    *,
    client: str,
    fake_pid: int,
) -> dict[str, Any]:
    """One timed run: the load generator's figures plus CPU per request."""
    body = json.dumps(workload.body).encode()
    headers = {"Content-Type": "application/json", **server.headers}
    if not workload.cached and server.name.startswith("fusion"):
        headers["Cache-Control"] = "no-cache, no-store"
    cpu_before, fake_before = server.cpu(), cpu_seconds(fake_pid)
    busy_before, client_before = busy_cpu_seconds(), children_cpu_seconds()
    if client == "wrk" and not workload.stream:
        figures = run_wrk(server.url(workload), body, headers, concurrency, duration)
    else:
        figures = run_loadgen(
            server.url(workload), body, headers, concurrency, duration, workload.stream
        )
    cpu, fake_cpu = server.cpu() - cpu_before, cpu_seconds(fake_pid) - fake_before
    client_cpu = children_cpu_seconds() - client_before
    # Everything else on the machine (other people's tests, say): the noise in this run.
    background = busy_cpu_seconds() - busy_before - cpu - fake_cpu - client_cpu
    requests = max(figures["requests"], 1)
    figures["cpu_ms_per_request"] = cpu * 1000 / requests if server.process else None
    figures["fake_cpu_ms_per_request"] = fake_cpu * 1000 / requests
    figures["fake_cpu_share"] = fake_cpu / duration
    figures["client_cpu_share"] = client_cpu / duration
    figures["background_cpu_share"] = max(background, 0.0) / duration
    return figures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric figure over the runs; errors summed."""
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        if key == "errors":
            total: Counter[str] = Counter()
            for run in runs:
                total.update(run["errors"])
            merged[key] = dict(total)
        elif isinstance(value, (int, float)):
            values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
            merged[key] = statistics.median(values)
        else:
            merged[key] = value
    return merged


def add_added(entry: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Latency added over the direct upstream at the same delay and concurrency."""
    workload = WORKLOADS[entry["workload"]]
    if entry["server"] == "direct" or workload.rounds == 0:
        return

    def direct(name: str) -> dict[str, Any] | None:
        for other in results:
            if (other["server"], other["workload"]) == ("direct", name) and (
                other["delay_ms"],
                other["concurrency"],
            ) == (entry["delay_ms"], entry["concurrency"]):
                median: dict[str, Any] = other["median"]
                return median
        return None

    median = entry["median"]
    plain = direct("passthrough")
    if plain is not None:
        for quantile in ("p50", "p99"):
            base = workload.rounds * plain[f"{quantile}_ms"]
            median[f"added_{quantile}_ms"] = median[f"{quantile}_ms"] - base
    streamed = direct("passthrough-stream")
    if workload.stream and streamed is not None and "ttft_p50_ms" in median:
        base = streamed.get("ttft_p50_ms", float("nan"))
        if workload.rounds == 2 and plain is not None:
            base += plain["p50_ms"]
        median["added_ttft_p50_ms"] = median["ttft_p50_ms"] - base


# --- the run -------------------------------------------------------------------------------------


@contextmanager
def serving(
    name: str, fake_url: str, args: argparse.Namespace, litellm: Path | None
) -> Iterator[Server]:
    if name == "direct":
        server = Server("direct", f"{fake_url}/chat/completions", {})
    elif name == "floor":
        server = start_floor(fake_url)
    elif name.startswith("fusion-"):
        server = start_fusion(fake_url, int(name.removeprefix("fusion-")[:-1]), args.log_level)
    else:
        assert litellm is not None
        server = start_litellm(litellm, fake_url)
    try:
        yield server
    finally:
        server.stop()


def run_comparison(args: argparse.Namespace, report: dict[str, Any]) -> None:
    litellm: Path | None = None
    if "litellm" in args.peer:
        try:
            litellm, version = ensure_litellm(args.litellm_spec)
            report["versions"]["litellm"] = version
        except PeerUnavailable as exc:
            report["peers"]["litellm"] = f"unavailable: {exc}"
            print(f"LiteLLM unavailable, going on without it: {exc}", flush=True)
    servers = ["direct", "floor", *(f"fusion-{n}w" for n in args.workers)]
    if litellm is not None:
        servers.append("litellm")
    results: list[dict[str, Any]] = report["results"]
    for delay in args.delays:
        fake, fake_url = start_fake(delay, CLIENT_CPU, stderr=log_file("fake"))
        try:
            for name in servers:
                plan = list(PLAN[name if name in PLAN else "fusion-2w"])
                if delay != args.delays[0]:
                    plan = [w for w in plan if w != "cache-hit"]
                try:
                    with serving(name, fake_url, args, litellm) as server:
                        run_server(server, plan, delay, fake.pid, args, results)
                except PeerUnavailable as exc:
                    report["peers"][name] = f"unavailable: {exc}"
                    print(f"{name} unavailable: {exc}", flush=True)
        finally:
            stop(fake)


def run_server(
    server: Server,
    plan: list[str],
    delay: int,
    fake_pid: int,
    args: argparse.Namespace,
    results: list[dict[str, Any]],
) -> None:
    for workload_name in plan:
        workload = WORKLOADS[workload_name]
        # Warm-up: connections, caches (the cache-hit entry is stored here), lazy imports.
        measure(server, workload, 10, 1, client=args.client, fake_pid=fake_pid)
        for concurrency in args.concurrency:
            runs = [
                measure(
                    server,
                    workload,
                    concurrency,
                    args.duration,
                    client=args.client,
                    fake_pid=fake_pid,
                )
                for _ in range(args.repeats)
            ]
            entry = {
                "delay_ms": delay,
                "server": server.name,
                "workload": workload.name,
                "concurrency": concurrency,
                "runs": runs,
                "median": median_of(runs),
            }
            entry["median"]["peak_rss_mib_per_worker"] = server.peak_rss_mib()
            add_added(entry, results)
            results.append(entry)
            print(line_of(entry), flush=True)


def line_of(entry: dict[str, Any]) -> str:
    m = entry["median"]
    text = (
        f"{entry['delay_ms']:>3} ms  {entry['server']:<10} {entry['workload']:<19} "
        f"c={entry['concurrency']:<3} {m['requests_per_s']:8.1f} req/s  p50 {m['p50_ms']:7.2f}  "
        f"p99 {m['p99_ms']:7.2f} ms"
    )
    if "added_p50_ms" in m:
        text += f"  added p50 {m['added_p50_ms']:6.2f} p99 {m['added_p99_ms']:6.2f}"
    if "ttft_p50_ms" in m:
        text += f"  ttft {m['ttft_p50_ms']:6.2f}"
    if "relay_p50_ms" in m:
        text += f"  relay {m['relay_p50_ms']:5.2f}"
    if m.get("cpu_ms_per_request") is not None:
        text += f"  cpu {m['cpu_ms_per_request']:5.2f} ms/req"
    if m["errors"]:
        text += f"  errors {m['errors']}"
    return text


# --- profile -------------------------------------------------------------------------------------


def ensure_py_spy() -> str:
    """py-spy from PATH or the project's venv, else installed beside the peers (once)."""
    for candidate in (shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")):
        if candidate and Path(candidate).exists():
            return candidate
    venv = PEER_HOME / "py-spy-venv"
    py_spy = venv / "bin" / "py-spy"
    if not py_spy.exists():
        base_python = getattr(sys, "_base_executable", sys.executable)
        for step in (
            [base_python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "py-spy"],
        ):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise PeerUnavailable(f"`{' '.join(step)}` failed: {done.stderr[-2000:]}")
    return str(py_spy)


def run_profiles(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """py-spy on the one worker of ``fusion-1w`` under each ``--profile-workload`` (0 ms fake)."""
    report["profiles"] = []
    try:
        py_spy = ensure_py_spy()
    except PeerUnavailable as exc:
        report["profiles"].append({"error": str(exc)})
        print(f"no profile: {exc}", flush=True)
        return
    for name in args.profile_workload:
        report["profiles"].append(run_profile(py_spy, WORKLOADS[name], args))


def run_profile(py_spy: str, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """py-spy on the one worker of ``fusion-1w`` while ``workload`` runs at concurrency 10."""
    fake, fake_url = start_fake(0)
    try:
        with serving("fusion-1w", fake_url, args, None) as server:
            (worker,) = server.worker_pids()
            measure(server, workload, 10, 2, client=args.client, fake_pid=fake.pid)
            raw = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "profile.txt"
            command = [py_spy, "record", "-p", str(worker), "-f", "raw", "-o", str(raw)]
            command += ["-d", str(args.profile), "-r", "250", "--nonblocking"]
            spy = subprocess.Popen(pinned(command, CLIENT_CPU), stdout=subprocess.DEVNULL)
            figures = measure(
                server, workload, 10, args.profile + 2, client=args.client, fake_pid=fake.pid
            )
            spy.wait(60)
            return {
                "workload": workload.name,
                "concurrency": 10,
                "seconds": args.profile,
                "load": figures,
                "raw_file": str(raw),
                **summarise_profile(raw.read_text()),
            }
    finally:
        stop(fake)


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_key(frame: str) -> tuple[str, str]:
    """(function, short file) of one py-spy frame ``function (path:line)``."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return match["function"], path


def package_of(path: str) -> str:
    """The package a frame's file belongs to (the first path component)."""
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def summarise_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares by function, and self shares by package."""
    self_samples: Counter[tuple[str, str]] = Counter()
    total_samples: Counter[tuple[str, str]] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(frame) for frame in stack.split(";")]
        frames = [frame for frame in frames if not frame[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1] == ("Runner.run", "asyncio/runners.py"):
            # uvloop's loop is C: its own work (sockets, epoll, timers, callback dispatch)
            # is sampled in the Python frame that started it.
            frames[-1] = ("(event loop: uvloop C code)", "uvloop")
        samples += count
        self_samples[frames[-1]] += count
        packages[package_of(frames[-1][1])] += count
        for frame in set(frames):
            total_samples[frame] += count

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"function": f, "file": p, "share": n / samples}
            for (f, p), n in counter.most_common(top)
        ]

    ours = Counter(
        {key: n for key, n in total_samples.items() if key[1].startswith("fusion_engine")}
    )
    return {
        "samples": samples,
        "self": rows(self_samples),
        "inclusive_fusion_engine": rows(ours),
        "self_by_package": [
            {"package": name, "share": n / samples} for name, n in packages.most_common(15)
        ],
    }


# --- reporting -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(memory) / 1024**2, 1),
        "kernel": platform.release(),
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[0],
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in (
        "fusion-engine",
        "aiohttp",
        "uvicorn",
        "gunicorn",
        "litestar",
        "msgspec",
        "uvloop",
    ):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    if shutil.which("wrk"):
        banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        found["wrk"] = (banner.stdout or banner.stderr).split()[1]
    return found


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(errors.items())) or "0"


def find(
    report: dict[str, Any], server: str, workload: str, delay: int, concurrency: int
) -> dict[str, Any] | None:
    for entry in report["results"]:
        if (entry["server"], entry["workload"], entry["delay_ms"], entry["concurrency"]) == (
            server,
            workload,
            delay,
            concurrency,
        ):
            median: dict[str, Any] = entry["median"]
            return median
    return None


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, required, verdict) for each target of the issue that was measured."""
    rows: list[tuple[str, str, str, str]] = []
    delay = 0 if 0 in {e["delay_ms"] for e in report["results"]} else None
    if delay is None:
        return rows

    def get(server: str, workload: str, c: int, key: str) -> float | None:
        median = find(report, server, workload, delay, c)
        value = None if median is None else median.get(key)
        return value if isinstance(value, (int, float)) else None

    def best_rps(server: str, workload: str) -> float | None:
        values = [
            e["median"]["requests_per_s"]
            for e in report["results"]
            if (e["server"], e["workload"], e["delay_ms"]) == (server, workload, delay)
        ]
        return max(values) if values else None

    def add(
        name: str, value: float | None, limit: float | None, need: str, ok: bool | None
    ) -> None:
        if value is None:
            return
        verdict = "–" if ok is None else ("met" if ok else "**not met**")
        shown = f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"
        rows.append((name, shown, need if limit is None else need.format(limit), verdict))

    def check(
        name: str,
        value: float | None,
        limit: float,
        need: str = "≤ {:.0f}",
        meets: Callable[[float, float], bool] = operator.le,
    ) -> None:
        """A row met when ``meets(value, limit)``; none when ``value`` was not measured."""
        if value is not None:
            add(name, value, limit, need, meets(value, limit))

    ours = get("fusion-1w", "passthrough", 1, "added_p50_ms")
    floor = get("floor", "passthrough", 1, "added_p50_ms")
    peer = get("litellm", "passthrough", 1, "added_p50_ms")
    check("passthrough added p50, c=1 (ms)", ours, 1.5, "≤ {:.1f}")
    if ours is not None and peer is not None:
        check("… vs LiteLLM's added p50 (ratio)", ours / peer, 1 / 18, "≤ {:.3f}")
    if ours is not None and floor is not None and floor > 0:
        add("… vs the floor's added p50 (ratio)", ours / floor, 2, "≤ {:.0f}×", ours <= 2 * floor)
    cpu = get("fusion-1w", "passthrough", 10, "cpu_ms_per_request")
    floor_cpu = get("floor", "passthrough", 10, "cpu_ms_per_request")
    if cpu is not None and floor_cpu:
        add(
            "passthrough CPU/request vs floor, c=10 (ratio)",
            cpu / floor_cpu,
            3,
            "≤ {:.0f}×",
            cpu <= 3 * floor_cpu,
        )
    ours_rps, peer_rps = best_rps("fusion-1w", "passthrough"), best_rps("litellm", "passthrough")
    if ours_rps and peer_rps:
        check(
            "passthrough req/s per worker vs LiteLLM (ratio)",
            ours_rps / peer_rps,
            20,
            "≥ {:.0f}×",
            operator.ge,
        )
    check(
        "fused CPU per request, c=10 (ms)", get("fusion-1w", "fused", 10, "cpu_ms_per_request"), 4
    )
    check(
        "fused req/s, 2 workers (best c)",
        best_rps("fusion-2w", "fused"),
        300,
        "≥ {:.0f}",
        operator.ge,
    )
    check(
        "fused added p99, c=10 (ms)",
        get("fusion-1w", "fused", 10, "added_p99_ms"),
        5,
        "< {:.0f}",
        operator.lt,
    )
    check(
        "passthrough added TTFT p50, c=1 (ms)",
        get("fusion-1w", "passthrough-stream", 1, "added_ttft_p50_ms"),
        2,
    )
    check(
        "fused-stream added TTFT p50, c=1 (ms)",
        get("fusion-1w", "fused-stream", 1, "added_ttft_p50_ms"),
        2,
        "≤ {:.0f} (seen from outside)",
    )
    check(
        "fused-stream: judge's first token, sent by the upstream → at the client, p50 c=1 (ms)",
        get("fusion-1w", "fused-stream", 1, "relay_p50_ms"),
        2,
    )
    relay_c10 = get("fusion-1w", "fused-stream", 10, "relay_p50_ms")
    add(
        "… the same at c=10, one saturated core (for information: queueing)",
        relay_c10,
        None,
        "–",
        None,
    )
    check("cache hit p50, c=1 (ms)", get("fusion-1w", "cache-hit", 1, "p50_ms"), 2)
    rss = [
        e["median"]["peak_rss_mib_per_worker"]
        for e in report["results"]
        if e["server"].startswith("fusion") and e["median"].get("peak_rss_mib_per_worker")
    ]
    if rss:
        check("peak RSS per worker, whole run (MiB)", max(rss), 100)
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    out: list[str] = []
    m, v = report["machine"], report["versions"]
    out.append(
        f"Measured {report['date']} on {m['nproc']} cores ({m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, load average {m['load_average_at_start']} "
        "at the start); " + ", ".join(f"{name} {version}" for name, version in v.items()) + "."
    )
    out.append("")
    s = report["settings"]
    out.append(
        f"Load generator: {s['client']} (streamed workloads: `bench/peers/loadgen.py`); "
        f"{s['duration_s']} s per run, {s['repeats']} runs per configuration, medians shown; "
        f"gateway log level `{s['log_level']}`. Command: `{report['command']}`."
    )
    for name, state in report["peers"].items():
        out.append("")
        out.append(f"**{name}**: {state}")
    rows = targets(report)
    if rows:
        out += ["", "#### Targets (0 ms upstream)", ""]
        out += ["| target | measured | required | verdict |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    workloads = list(dict.fromkeys(e["workload"] for e in report["results"]))
    for delay in dict.fromkeys(e["delay_ms"] for e in report["results"]):
        for workload in workloads:
            entries = [
                e for e in report["results"] if (e["delay_ms"], e["workload"]) == (delay, workload)
            ]
            if not entries:
                continue
            stream = WORKLOADS[workload].stream
            out += ["", f"#### {workload}, upstream delay {delay} ms", ""]
            head = "| server | c | req/s | p50 ms | p90 ms | p99 ms | added p50 | added p99 |"
            rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
            if stream:
                head += " TTFT p50 | added TTFT p50 | 1st token relay p50 | relay p99 |"
                rule += "---:|---:|---:|---:|"
            head += " CPU ms/req | fake CPU ms/req | peak RSS MiB/worker | errors | bg CPU |"
            rule += "---:|---:|---:|---:|---:|"
            out += [head, rule]
            for e in entries:
                md = e["median"]
                cells = [
                    e["server"],
                    str(e["concurrency"]),
                    fmt(md["requests_per_s"], 1),
                    fmt(md["p50_ms"]),
                    fmt(md["p90_ms"]),
                    fmt(md["p99_ms"]),
                    fmt(md.get("added_p50_ms")),
                    fmt(md.get("added_p99_ms")),
                ]
                if stream:
                    cells += [fmt(md.get("ttft_p50_ms")), fmt(md.get("added_ttft_p50_ms"))]
                    cells += [fmt(md.get("relay_p50_ms")), fmt(md.get("relay_p99_ms"))]
                cells += [
                    fmt(md.get("cpu_ms_per_request")),
                    fmt(md.get("fake_cpu_ms_per_request")),
                    fmt(md.get("peak_rss_mib_per_worker"), 0),
                    errors_text(md["errors"]),
                    f"{md.get('background_cpu_share', 0):.0%}",
                ]
                out.append("| " + " | ".join(cells) + " |")
    profiles = report.get("profiles") or ([report["profile"]] if "profile" in report else [])
    for profile in profiles:
        if "self" in profile:
            out += render_profile(profile)
        else:
            out += ["", f"No profile: {profile.get('error')}"]
    return "\n".join(out) + "\n"


def render_profile(profile: dict[str, Any]) -> list[str]:
    load = profile["load"]
    out = [
        "",
        f"#### Profile: one worker under `{profile['workload']}` load, c={profile['concurrency']}",
        "",
        f"py-spy, {profile['seconds']} s, {profile['samples']} samples "
        f"({fmt(load['requests_per_s'], 1)} req/s, {fmt(load.get('cpu_ms_per_request'))} ms CPU "
        "per request while sampled). Self time by package:",
        "",
        "| package | self share |",
        "|---|---:|",
    ]
    out += [f"| {row['package']} | {row['share']:.1%} |" for row in profile["self_by_package"]]
    out += [
        "",
        "Top functions by self time:",
        "",
        "| function | file | self share |",
        "|---|---|---:|",
    ]
    out += [
        f"| `{row['function']}` | `{row['file']}` | {row['share']:.1%} |" for row in profile["self"]
    ]
    out += ["", "Fusion Engine functions by inclusive time:", ""]
    out += ["| function | file | inclusive share |", "|---|---|---:|"]
    out += [
        f"| `{row['function']}` | `{row['file']}` | {row['share']:.1%} |"
        for row in profile["inclusive_fusion_engine"]
    ]
    return out


def update_doc(path: Path, text: str) -> None:
    doc = path.read_text()
    if DOC_BEGIN not in doc or DOC_END not in doc:
        raise SystemExit(f"{path}: no {DOC_BEGIN} … {DOC_END} section to update")
    head, rest = doc.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{text}{DOC_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peer", action="append", default=[], choices=["litellm"])
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="pip requirement")
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 50], help="fake delay, ms")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--log-level", default="info", help="the gateway's FUSION_LOG_LEVEL")
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: no profile)")
    parser.add_argument("--profile-only", action="store_true", help="skip the comparison")
    parser.add_argument(
        "--profile-workload",
        nargs="+",
        default=["fused", "fused-stream"],
        choices=sorted(w for w in WORKLOADS if w != "cache-hit"),
    )
    parser.add_argument("--from-json", type=Path, help="no run: render this earlier --json")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    parser.add_argument("--update-doc", type=Path, help=f"replace its {DOC_BEGIN} section")
    args = parser.parse_args()
    if args.from_json:
        report_out(json.loads(args.from_json.read_text()), args)
        return
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "aiohttp"
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/bench_peers.py " + " ".join(sys.argv[1:]),
        "machine": machine(),  # before pinning: nproc counts the CPUs this process may use
        "versions": versions(),
        "settings": {
            "client": args.client,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "log_level": args.log_level,
            "pinning": {"server": SERVER_CPU, "fake_and_load_generator": CLIENT_CPU},
        },
        "peers": {},
        "results": [],
    }
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    if not args.profile_only:
        run_comparison(args, report)
    if args.profile:
        run_profiles(args, report)
    report["wall_time_s"] = round(time.monotonic() - started, 1)
    report_out(report, args)


def report_out(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the Markdown; write the JSON, the Markdown and the doc where asked."""
    text = render_markdown(report)
    print(text)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    if args.update_doc:
        update_doc(args.update_doc, text)
    print(f"wall time {report['wall_time_s']} s")


if __name__ == "__main__":
    main()
