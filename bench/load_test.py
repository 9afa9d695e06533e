"""Load test: mixed traffic against `fusion serve` (two workers) for a while, with faults.

Starts a private ``redis-server`` (free port), the fake upstream (fixed delay per call) and
`fusion serve` with two gunicorn workers and the Redis cache, then drives them from this
process with aiohttp in a closed loop: ``--concurrency`` clients, each sending its own kind of
request back to back for ``--duration`` seconds. Kinds (the mix is fixed by client number):

- ``fused``: ``fusion/load`` (3 members + judge) with ``Cache-Control: no-cache, no-store``
  and a unique question each time, so it really fuses.
- ``stream``: the same, streamed; it succeeds only with ``data: [DONE]`` and no in-band error.
- ``cached``: one of a few identical questions, cache allowed: hits after the first misses.
- ``passthrough``: a plain model id, passed through to the fake.
- ``slow`` / ``slow-stream`` (only with ``--sigterm-at``): ``fusion/slow``, whose third member
  answers after ``--slow-delay-ms``, so requests are in flight when the SIGTERM lands.

Measured: requests sent / succeeded / failed per kind (by status and exception), p50/p99
latency of the successes, the RSS of each gateway worker every second (``VmRSS`` of the
gunicorn master's children) and its growth (median of the last 20 s minus median of the first
20 s; a third of the run each when it is shorter than 60 s), each worker's CPU time, the fake's,
this process's and the whole machine's.

Faults (times in seconds from the start of the load):

- ``--kill-redis-at S --restart-redis-at S``: SIGKILL the private Redis, later start it again
  on the same port. The gateway must keep answering (the cache fails open) and recover by
  itself: ``/metrics`` is scraped every second for ``fusion_cache_requests_total``, and the
  restarted Redis's own ``keyspace_hits`` show that the gateway reads from it again.
- ``--sigterm-at S``: SIGTERM to the gunicorn master with slow requests in flight. Every
  accepted request must end with a 200. A request that got no status line after the SIGTERM
  counts as "refused after shutdown" unless the fake upstream saw its (unique) question, which
  proves the gateway had accepted it: then it is a failure. The run ends one second after the
  gateway has exited.

The gateway is pinned to CPU 0; Redis, the fake and this load generator to CPU 1 (``taskset``,
when there is more than one CPU). Writes a JSON summary (``--json``), prints Markdown tables.

    python bench/load_test.py [--duration 60] [--concurrency 200] [--delay-ms 20]
        [--kill-redis-at 20 --restart-redis-at 40] [--sigterm-at 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import ROOT, cpu_seconds, free_port, percentile, pinned, start_fake, start_gateway, stop

KEY = "load-test-key"
MEMBERS = ("load/member-1", "load/member-2", "load/member-3")
SLOW_MEMBER = "load/slow-member"
JUDGE = "load/judge"
PASSTHROUGH_MODEL = "load/single"
CACHED_QUESTIONS = 8
WORKERS = 2
#: A client whose request was refused after the SIGTERM waits this long before the next try.
REFUSED_BACKOFF_S = 0.2
REQUEST_TIMEOUT_S = 60.0
GRACEFUL_TIMEOUT_S = 120.0  # gunicorn_conf.graceful_timeout
RSS_WINDOW_S = 20.0
MB = 1024 * 1024
CACHE_SAMPLE = re.compile(r'^fusion_cache_requests_total\{result="(\w+)"\} (\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix; ``weight`` clients of every ``sum(weights)`` send it."""

    name: str
    model: str
    stream: bool
    fresh: bool  # sends Cache-Control: no-cache, no-store
    weight: int


KINDS = (
    Kind("fused", "fusion/load", stream=False, fresh=True, weight=3),
    Kind("stream", "fusion/load", stream=True, fresh=True, weight=2),
    Kind("cached", "fusion/load", stream=False, fresh=False, weight=3),
    Kind("passthrough", PASSTHROUGH_MODEL, stream=False, fresh=False, weight=2),
)
SLOW_KINDS = (
    Kind("slow", "fusion/slow", stream=False, fresh=True, weight=1),
    Kind("slow-stream", "fusion/slow", stream=True, fresh=True, weight=1),
)


@dataclass(slots=True)
class Record:
    """One request; times in seconds from the start of the load."""

    kind: str
    question: str
    started: float
    ended: float = 0.0
    #: ok | failed | unanswered (no status line: refused or dropped, decided after the run)
    outcome: str = "unanswered"
    detail: str = ""  # "http 502", an exception name, "bad body"
    cache: str = ""  # X-Fusion-Cache


@dataclass
class Run:
    """What the concurrent tasks of one run share."""

    end: float
    t0: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    metrics: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of each worker when first and last seen (workers are gone after a SIGTERM).
    worker_cpu: dict[int, tuple[float, float]] = field(default_factory=dict)
    gateway_exit: int | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0


# --- the processes -------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port (never the shared one), killable and restartable."""

    def __init__(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not installed")
        self.port = free_port()
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        options += ["--appendonly", "no", "--dir", tempfile.gettempdir()]
        self.command = pinned([server, *options], 1)
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        for _ in range(100):
            if process.poll() is not None:
                raise SystemExit(f"redis-server exited with {process.returncode}")
            try:
                if redis_command(self.port, "PING") == b"+PONG":
                    return process
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise SystemExit("redis-server did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)

    def restart(self) -> None:
        self.process = self._start()

    def stop(self) -> None:
        if self.process.poll() is None:
            stop(self.process)


def redis_command(port: int, *words: str) -> bytes:
    """Send one command in RESP; the reply's first line, or a bulk string's payload."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request.encode())
        reply = b""
        while not _complete(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, rest = reply.partition(b"\r\n")
    return rest[: int(head[1:])] if head.startswith(b"$") else head


def _complete(reply: bytes) -> bool:
    head, found, _ = reply.partition(b"\r\n")
    if not found:
        return False
    return not head.startswith(b"$") or len(reply) >= len(head) + int(head[1:]) + 4


def redis_stats(port: int) -> dict[str, int]:
    """keyspace_hits / keyspace_misses of a Redis, and its number of keys."""
    info = redis_command(port, "INFO", "stats").decode()
    stats = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    keys = int(redis_command(port, "DBSIZE").lstrip(b":"))
    return {name: int(stats[name]) for name in ("keyspace_hits", "keyspace_misses")} | {
        "keys": keys
    }


def write_panels(root: Path) -> Path:
    """The two panels of the run (``load``, and ``slow`` with the slow member), in ``root``."""
    panels = root / "panels"
    panels.mkdir()
    for name, members in (("load", MEMBERS), ("slow", (*MEMBERS[:2], SLOW_MEMBER))):
        lines = [f"schema_version: 1\nname: {name}\ndescription: load test\nmodels:"]
        lines += [f"  - slug: {slug}" for slug in members]
        lines.append(f"judge_model: {JUDGE}\n")
        (panels / f"{name}.yaml").write_text("\n".join(lines))
    return panels


def script_fake(fake_url: str, slow_delay_s: float) -> None:
    """The slow member answers after ``slow_delay_s``; every other model after the fixed delay."""
    body = json.dumps({SLOW_MEMBER: {"delay_s": slow_delay_s}}).encode()
    request = urllib.request.Request(
        fake_url.removesuffix("/v1") + "/_fake/script", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=5).close()


def seen_by_fake(fake_url: str, questions: set[str]) -> set[str]:
    """Which of ``questions`` reached the fake upstream (as a member's or passthrough call)."""
    seen: set[str] = set()
    for model in (MEMBERS[0], PASSTHROUGH_MODEL):
        url = f"{fake_url.removesuffix('/v1')}/_fake/requests?model={model}"
        with urllib.request.urlopen(url, timeout=60) as reply:
            for received in json.loads(reply.read()):
                messages = received["body"].get("messages") or [{}]
                if messages[-1].get("content") in questions:
                    seen.add(messages[-1]["content"])
    return seen


def workers_of(master: int) -> list[int]:
    """The gunicorn workers: the live children of the master."""
    try:
        return [
            int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()
        ]
    except OSError:
        return []


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wait_for_workers(master: int, base_url: str) -> list[int]:
    """Wait (bounded) until every worker has answered ``/health``; the workers' pids."""
    answered: set[int] = set()
    deadline = time.monotonic() + 20
    while len(answered) < WORKERS and time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as reply:
            answered.add(json.loads(reply.read())["pid"])
        time.sleep(0.05)
    return sorted(workers_of(master))


def machine_busy_s() -> float:
    """CPU seconds every CPU has spent busy since boot (``/proc/stat``: all but idle, iowait)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Stack:
    """The processes of one run."""

    redis: PrivateRedis
    fake: subprocess.Popen[bytes]
    fake_url: str
    gateway: subprocess.Popen[bytes]
    gateway_url: str


@contextmanager
def processes(args: argparse.Namespace, scratch: Path) -> Iterator[Stack]:
    """Private Redis, fake upstream and gateway (two workers), stopped on the way out."""
    redis = PrivateRedis()
    fake, fake_url = start_fake(args.delay_ms, cpu=1)
    gateway = None
    try:
        script_fake(fake_url, args.slow_delay_ms / 1000)
        (scratch / "metrics").mkdir()
        env = {
            "OPENROUTER_API_KEY": "load-test",
            "OPENROUTER_BASE_URL": fake_url,
            "FUSION_SERVER_API_KEYS": KEY,
            "FUSION_PANELS_DIR": str(write_panels(scratch)),
            "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
            "FUSION_CACHE": "redis",
            "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"),
        }
        gateway, gateway_url = start_gateway(env, cpu=0, workers=WORKERS)
        yield Stack(redis, fake, fake_url, gateway, gateway_url)
    finally:
        if gateway is not None and gateway.poll() is None:
            stop(gateway)
        stop(fake)
        redis.stop()


# --- the load ------------------------------------------------------------------------------------


async def one_request(
    session: aiohttp.ClientSession, url: str, kind: Kind, question: str, run: Run
) -> Record:
    """Send one request and judge its reply."""
    body = {
        "model": kind.model,
        "stream": kind.stream,
        "messages": [{"role": "user", "content": question}],
    }
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if kind.fresh:
        headers["Cache-Control"] = "no-cache, no-store"
    else:
        body["seed"] = 1  # deterministic, so the panel's default `cache: auto` caches it
    record = Record(kind.name, question, run.now())
    answered = False
    try:
        async with session.post(url, data=json.dumps(body), headers=headers) as reply:
            answered = True
            record.cache = reply.headers.get("X-Fusion-Cache", "")
            payload = await reply.read()
            if reply.status != 200:
                record.outcome, record.detail = "failed", f"http {reply.status}"
            elif not (stream_complete(payload) if kind.stream else completion_ok(payload)):
                record.outcome, record.detail = "failed", "bad body"
            else:
                record.outcome = "ok"
    except (aiohttp.ClientError, TimeoutError) as error:
        record.detail = type(error).__name__
        if answered:
            record.outcome, record.detail = "failed", f"{record.detail} after the status line"
    record.ended = run.now()
    return record


def completion_ok(payload: bytes) -> bool:
    """A chat.completion with an answer."""
    try:
        message = json.loads(payload)["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return bool(message.get("content") or message.get("tool_calls"))


def stream_complete(payload: bytes) -> bool:
    """An SSE stream with chunks, no in-band error, ended by ``data: [DONE]``."""
    data = [line[6:] for line in payload.decode().splitlines() if line.startswith("data: ")]
    if len(data) < 2 or data[-1] != "[DONE]":
        return False
    return not any("error" in json.loads(item) for item in data[:-1])


async def client(
    number: int, kind: Kind, session: aiohttp.ClientSession, url: str, run: Run, tag: str
) -> None:
    """One closed-loop client: its kind of request, back to back, until the run ends."""
    sent = 0
    while run.now() < run.end:
        if kind.name == "cached":
            question = f"cached question {(number + sent) % CACHED_QUESTIONS}"
        else:
            question = f"{kind.name} {tag} client {number} request {sent}"
        sent += 1
        record = await one_request(session, url, kind, question, run)
        run.records.append(record)
        if record.outcome == "unanswered" and "sigterm" in run.events:
            await asyncio.sleep(REFUSED_BACKOFF_S)


async def sample_rss(master: int, run: Run) -> None:
    """Every second: the RSS and CPU time of each worker (children of the gunicorn master)."""
    while run.now() < run.end:
        sample_workers(master, run)
        await asyncio.sleep(1.0)


def sample_workers(master: int, run: Run) -> None:
    moment = run.now()
    for pid in workers_of(master):
        size = rss_bytes(pid)
        try:
            cpu = cpu_seconds(pid)
        except OSError:
            continue
        if size is not None:
            run.rss.setdefault(pid, []).append((moment, size))
            run.worker_cpu[pid] = (run.worker_cpu.get(pid, (cpu, cpu))[0], cpu)


async def scrape_metrics(base_url: str, run: Run) -> None:
    """Every second: ``fusion_cache_requests_total`` by result, summed over the workers."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while run.now() < run.end:
            try:
                async with session.get(f"{base_url}/metrics") as reply:
                    text = await reply.text()
                counts: dict[str, float] = {}
                for result, value in CACHE_SAMPLE.findall(text):
                    counts[result] = counts.get(result, 0.0) + float(value)
                run.metrics.append((run.now(), counts))
            except (aiohttp.ClientError, TimeoutError):
                pass  # the gateway may be shutting down; the clients count what matters
            await asyncio.sleep(1.0)


async def faults(args: argparse.Namespace, stack: Stack, run: Run) -> None:
    """Kill and restart Redis, and SIGTERM the gateway, at their times."""
    plan = [
        (at, event)
        for at, event in (
            (args.kill_redis_at, "redis_killed"),
            (args.restart_redis_at, "redis_restarted"),
            (args.sigterm_at, "sigterm"),
        )
        if at is not None
    ]
    for at, event in sorted(plan):
        await asyncio.sleep(max(0.0, at - run.now()))
        if event == "redis_killed":
            stack.redis.kill()
        elif event == "redis_restarted":
            await asyncio.to_thread(stack.redis.restart)
        else:
            stack.gateway.send_signal(signal.SIGTERM)
        run.events[event] = run.now()
        if event == "sigterm":
            run.gateway_exit = await asyncio.to_thread(stack.gateway.wait, GRACEFUL_TIMEOUT_S + 10)
            run.events["gateway_exited"] = run.now()
            run.end = min(run.end, run.now() + 1.0)


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run the load, stop everything; the summary."""
    with (
        tempfile.TemporaryDirectory(prefix="fusion-load-") as scratch,
        processes(args, Path(scratch)) as stack,
    ):
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        workers = wait_for_workers(stack.gateway.pid, stack.gateway_url)
        kinds = KINDS + (SLOW_KINDS if args.sigterm_at is not None else ())
        schedule = [kind for kind in kinds for _ in range(kind.weight)]
        run, tag = Run(end=float(args.duration)), uuid.uuid4().hex[:8]
        sample_workers(stack.gateway.pid, run)
        fake_cpu, own_cpu, machine_cpu = cpu_seconds(stack.fake.pid), own_cpu_s(), machine_busy_s()
        redis_pid, redis_cpu = stack.redis.process.pid, cpu_seconds(stack.redis.process.pid)
        url = f"{stack.gateway_url}/v1/chat/completions"
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        ) as session:
            await asyncio.gather(
                *(
                    client(n, schedule[n % len(schedule)], session, url, run, tag)
                    for n in range(args.concurrency)
                ),
                sample_rss(stack.gateway.pid, run),
                scrape_metrics(stack.gateway_url, run),
                faults(args, stack, run),
            )
        elapsed = run.now()
        sample_workers(stack.gateway.pid, run)
        redis_now = stack.redis.process.pid
        cpu: dict[str, Any] = {
            "workers": {
                str(pid): round(last - first, 2) for pid, (first, last) in run.worker_cpu.items()
            },
            "fake_upstream": round(cpu_seconds(stack.fake.pid) - fake_cpu, 2),
            "load_generator": round(own_cpu_s() - own_cpu, 2),
            # After a restart only the new instance's CPU is known.
            "redis": round(
                cpu_seconds(redis_now) - (redis_cpu if redis_now == redis_pid else 0), 2
            ),
            # Everything busy on the machine, ours and anybody else's: a shared box shows here.
            "machine_busy": round(machine_busy_s() - machine_cpu, 2),
            "machine_available": round(elapsed * (os.cpu_count() or 1), 2),
        }
        ours = sum(cpu["workers"].values()) + sum(
            cpu[name] for name in ("fake_upstream", "load_generator", "redis")
        )
        cpu["everything_else"] = round(cpu["machine_busy"] - ours, 2)
        accepted: set[str] = set()
        if "sigterm" in run.events:
            # Only unique questions can be traced to the fake; the cached kind repeats its own.
            unanswered = {
                r.question for r in run.records if r.outcome == "unanswered" and r.kind != "cached"
            }
            accepted = seen_by_fake(stack.fake_url, unanswered)
        summary = summarise(args, run, workers, elapsed, accepted)
        summary["cpu_s"] = cpu
        if "redis_restarted" in run.events:
            summary["redis"]["restarted_redis"] = redis_stats(stack.redis.port)
        return summary


# --- the summary ---------------------------------------------------------------------------------


def summarise(
    args: argparse.Namespace, run: Run, workers: list[int], elapsed: float, accepted: set[str]
) -> dict[str, Any]:
    """Counts, latencies, memory and fault results of a run, as JSON-ready data."""
    sigterm = run.events.get("sigterm")
    for record in run.records:
        if record.outcome == "unanswered":
            if record.question in accepted:
                record.outcome, record.detail = "failed", f"{record.detail} (accepted, dropped)"
            elif sigterm is not None and record.ended >= sigterm:
                record.outcome = "refused"
            else:
                record.outcome = "failed"
    kinds = {name: tally([r for r in run.records if r.kind == name]) for name in _names(run)}
    total = {
        key: sum(t[key] for t in kinds.values())
        for key in ("sent", "succeeded", "failed", "refused")
    }
    summary: dict[str, Any] = {
        "config": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "delay_ms": args.delay_ms,
            "slow_delay_ms": args.slow_delay_ms if sigterm is not None else None,
            "gateway_workers": WORKERS,
            "cpus": os.cpu_count(),
            "pinning": "gateway on CPU 0; Redis, fake upstream and load generator on CPU 1",
        },
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(total["sent"] / elapsed, 1),
        "total": total,
        "kinds": kinds,
        "memory": memory(run, workers, sigterm),
        "events": {name: round(at, 2) for name, at in run.events.items()},
    }
    if "redis_killed" in run.events:
        summary["redis"] = redis_outcome(run)
    if sigterm is not None:
        summary["sigterm"] = drain_outcome(run, sigterm)
    return summary


def _names(run: Run) -> list[str]:
    return list(dict.fromkeys(record.kind for record in run.records))


def tally(records: list[Record]) -> dict[str, Any]:
    """Sent / succeeded / failed / refused, errors and cache headers, p50/p99 of the successes."""
    outcomes = Counter(record.outcome for record in records)
    latencies = [1000 * (r.ended - r.started) for r in records if r.outcome == "ok"]
    return {
        "sent": len(records),
        "succeeded": outcomes["ok"],
        "failed": outcomes["failed"],
        "refused": outcomes["refused"],
        "p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "errors": dict(Counter(r.detail for r in records if r.outcome != "ok")),
        "cache": dict(Counter(r.cache for r in records if r.cache)),
    }


def memory(run: Run, workers: list[int], sigterm: float | None) -> dict[str, Any]:
    """RSS per worker: median of the first and of the last window, growth, peak (MB)."""
    until = sigterm if sigterm is not None else run.end
    window = min(RSS_WINDOW_S, until / 3)
    report: dict[str, Any] = {"window_s": round(window, 1), "workers": {}}
    for pid, samples in run.rss.items():
        sizes = [(t, size / MB) for t, size in samples if t <= until]
        if not sizes:
            continue
        first = [size for t, size in sizes if t < window] or [sizes[0][1]]
        last = [size for t, size in sizes if t >= until - window] or [sizes[-1][1]]
        start, end = statistics.median(first), statistics.median(last)
        report["workers"][str(pid)] = {
            "start_mb": round(start, 1),
            "end_mb": round(end, 1),
            "growth_mb": round(end - start, 1),
            "peak_mb": round(max(size for _, size in sizes), 1),
            "samples": len(sizes),
        }
    # A worker that appeared during the load replaced one that died (before any SIGTERM).
    report["replaced_workers"] = sorted(
        pid for pid, samples in run.rss.items() if pid not in workers and samples[0][0] <= until
    )
    return report


def redis_outcome(run: Run) -> dict[str, Any]:
    """Cache results by phase (before the kill, Redis down, after the restart)."""
    killed = run.events["redis_killed"]
    restarted = run.events.get("redis_restarted", float("inf"))
    phases = {
        "before_kill": (0.0, killed),
        "redis_down": (killed, restarted),
        "after_restart": (restarted, float("inf")),
    }
    report: dict[str, Any] = {"phases": {}}
    for phase, (start, end) in phases.items():
        cached = [r for r in run.records if r.kind == "cached" and start <= r.ended < end]
        ok = [1000 * (r.ended - r.started) for r in cached if r.outcome == "ok"]
        inside = [counts for t, counts in run.metrics if start <= t < end]
        report["phases"][phase] = {
            "replies": dict(Counter(r.cache or r.outcome for r in cached)),
            "p50_ms": round(percentile(ok, 0.5), 1) if ok else None,
            "p99_ms": round(percentile(ok, 0.99), 1) if ok else None,
            # fusion_cache_requests_total's increase over the phase (first to last scrape in it)
            "metric": {k: v - inside[0].get(k, 0.0) for k, v in inside[-1].items()}
            if len(inside) > 1
            else {},
        }
    report["timeline"] = [
        {"t": round(t, 1)} | {k: round(after.get(k, 0) - before.get(k, 0)) for k in after}
        for (_, before), (t, after) in zip(run.metrics, run.metrics[1:], strict=False)
    ]
    # Recovered: the first scrape interval after the restart with hits and no cache error.
    recovered = [
        step["t"]
        for step in report["timeline"]
        if step["t"] > restarted and step.get("hit", 0) > 0 and step.get("error", 0) == 0
    ]
    report["recovered_after_s"] = round(recovered[0] - restarted, 1) if recovered else None
    return report


def drain_outcome(run: Run, sigterm: float) -> dict[str, Any]:
    """What became of the requests in flight when the SIGTERM was sent."""
    in_flight = [r for r in run.records if r.started < sigterm <= r.ended]
    by_kind = {
        name: {"in_flight": len(mine)} | Counter(r.outcome for r in mine)
        for name in _names(run)
        if (mine := [r for r in in_flight if r.kind == name])
    }
    exited = run.events.get("gateway_exited")
    last_ok = max((r.ended for r in in_flight if r.outcome == "ok"), default=sigterm)
    # Whether the slow requests were let run to their end (the slow member's whole delay)
    # does not depend on where in their cycle the SIGTERM happened to land.
    slow_ok = [
        r.ended - r.started for r in in_flight if r.kind.startswith("slow") and r.outcome == "ok"
    ]
    return {
        "in_flight_at_sigterm": by_kind,
        "last_200_after_sigterm_s": round(last_ok - sigterm, 2),
        "slow_in_flight_shortest_s": round(min(slow_ok), 2) if slow_ok else None,
        "drain_s": round(exited - sigterm, 2) if exited is not None else None,
        "gateway_exit_code": run.gateway_exit,
    }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables."""
    config, mem = summary["config"], summary["memory"]
    lines = [
        f"{config['duration_s']:g} s x {config['concurrency']} clients, fake delay "
        f"{config['delay_ms']} ms, {config['gateway_workers']} workers, {config['cpus']} CPUs "
        f"({config['pinning']}): {summary['requests_per_s']} req/s",
        "",
        "| kind | sent | succeeded | failed | refused after shutdown | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in [*summary["kinds"].items(), ("**total**", summary["total"])]:
        errors = ", ".join(f"{k}: {v}" for k, v in t.get("errors", {}).items()) or "-"
        lines.append(
            f"| {name} | {t['sent']} | {t['succeeded']} | {t['failed']} | {t['refused']} "
            f"| {t.get('p50_ms', '')} | {t.get('p99_ms', '')} | {errors} |"
        )
    window = mem["window_s"]
    lines += [
        "",
        f"| worker | RSS start MB (median of first {window:g} s) | RSS end MB (median of last "
        f"{window:g} s) | growth MB | peak MB | CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cpu = summary["cpu_s"]
    for pid, m in mem["workers"].items():
        lines.append(
            f"| {pid} | {m['start_mb']} | {m['end_mb']} | {m['growth_mb']} | {m['peak_mb']} "
            f"| {cpu['workers'].get(pid, '-')} |"
        )
    lines += [
        "",
        f"CPU: fake upstream {cpu['fake_upstream']} s, load generator {cpu['load_generator']} s; "
        f"Redis {cpu['redis']} s; whole machine busy {cpu['machine_busy']} of "
        f"{cpu['machine_available']} CPU-s, {cpu['everything_else']} of them outside these "
        "processes (other tenants, the gunicorn master, the kernel). "
        f"Replaced workers: {mem['replaced_workers'] or 'none'}. "
        f"Events (s): {summary['events'] or 'none'}",
    ]
    if "redis" in summary:
        lines += [
            "",
            "| cache phase | cached replies (X-Fusion-Cache) | p50 ms | p99 ms | "
            "fusion_cache_requests_total increase |",
            "|---|---|---:|---:|---|",
        ]
        for phase, p in summary["redis"]["phases"].items():
            metric = ", ".join(f"{k} {v:g}" for k, v in p["metric"].items())
            lines.append(f"| {phase} | {p['replies']} | {p['p50_ms']} | {p['p99_ms']} | {metric} |")
        lines += [
            "",
            f"Recovered {summary['redis']['recovered_after_s']} s after the restart (first "
            "scrape interval with hits and no cache error); restarted Redis at the end: "
            f"{summary['redis'].get('restarted_redis')}",
        ]
    if "sigterm" in summary:
        s = summary["sigterm"]
        lines += [
            "",
            f"SIGTERM: in flight then {s['in_flight_at_sigterm']}; last 200 "
            f"{s['last_200_after_sigterm_s']} s after it; the gateway exited {s['drain_s']} s "
            f"after it with code {s['gateway_exit_code']}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=20, help="the fake's delay per call")
    parser.add_argument("--slow-delay-ms", type=int, default=2000, help="the slow member's")
    parser.add_argument("--kill-redis-at", type=float, metavar="S")
    parser.add_argument("--restart-redis-at", type=float, metavar="S")
    parser.add_argument("--sigterm-at", type=float, metavar="S")
    parser.add_argument(
        "--json", type=Path, default=Path(tempfile.gettempdir()) / "fusion-load-test.json"
    )
    args = parser.parse_args()
    times = (args.kill_redis_at, args.restart_redis_at, args.sigterm_at)
    if any(at is not None and not 0 <= at < args.duration for at in times):
        parser.error("fault times must fall within --duration")
    if args.restart_redis_at is not None and (
        args.kill_redis_at is None or args.restart_redis_at <= args.kill_redis_at
    ):
        parser.error("--restart-redis-at needs an earlier --kill-redis-at")
    summary = asyncio.run(drive(args))
    args.json.write_text(json.dumps(summary, indent=2))
    print(markdown(summary))
    print(f"\nJSON summary: {args.json}")


if __name__ == "__main__":
    main()
