"""CPU regression guard: the gateway's CPU per request against a committed baseline.

CPU time (the gateway's whole process tree, from /proc), not wall time, so a busy or slower
machine moves it far less than latency or requests/s. One short run of ``bench/bench_peers.py``'s
machinery: the fake upstream at 0 ms, ``fusion serve`` with one worker (production log level),
the ``passthrough`` and ``fused`` workloads at concurrency 10, ``--repeats`` runs of
``--duration`` seconds each after a warm-up; the median CPU ms per request of each workload must
stay within ``--margin`` times the baseline's. The same question on the Responses and Messages
APIs (``responses-*``, ``messages-*``) may cost at most 1.25 times the chat workload it is
translated to, measured in the same rounds. wrk drives the load when installed, else
``bench/peers/loadgen.py`` (aiohttp): nothing beyond the project's venv is needed.

Exit status: 0 within the limits; 1 a regression; 2 the measurement itself failed (a server did
not start, the load generator failed, a run had errors or too few requests, a workload is
missing from the baseline) — a guard that measured nothing must not pass.

    python bench/cpu_guard.py --guard bench/peers/cpu-baseline.json           # make bench-guard
    python bench/cpu_guard.py --write-baseline bench/peers/cpu-baseline.json  # make bench-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The guarded workloads (names of ``bench_peers.WORKLOADS``).
GUARDED = ("passthrough", "fused")
#: The Responses and Messages APIs' workloads, each held against the chat workload it is
#: translated to, measured in the same run (so the machine's speed cancels out).
TRANSLATED = {
    "responses-passthrough": "passthrough",
    "responses-fused": "fused",
    "messages-passthrough": "passthrough",
    "messages-fused": "fused",
}
#: Translating to and from another API may cost at most this much more CPU than chat itself.
#: Judged by the median over rounds of each round's ratio (the two workloads' runs of a round
#: follow each other, so they share the machine's mood of the moment; the median drops a round
#: that something else on the machine disturbed).
TRANSLATION_MARGIN = 1.25
DEFAULT_MARGIN = 2.0
DEFAULT_MIN_REQUESTS = 200
#: Exit statuses.
OK, REGRESSION, FAILED = 0, 1, 2


class MeasurementFailed(Exception):
    """The guard could not measure (so it can neither pass nor fail the code)."""


@dataclass(frozen=True)
class Verdict:
    """One workload's measured CPU per request against its limit."""

    workload: str
    baseline_ms: float
    measured_ms: float
    limit_ms: float

    @property
    def ok(self) -> bool:
        return self.measured_ms <= self.limit_ms


def compare(
    baseline: Mapping[str, Any], measured: Mapping[str, float], margin: float
) -> list[Verdict]:
    """Each baseline workload's measured CPU ms per request against baseline × ``margin``.

    Raises:
        MeasurementFailed: a workload of the baseline was not measured, or one measured has no
            baseline (the baseline is stale: regenerate it), or a figure is not positive.
    """
    expected: Mapping[str, float] = baseline["cpu_ms_per_request"]
    if set(expected) != set(measured):
        raise MeasurementFailed(
            f"the baseline has workloads {sorted(expected)} but {sorted(measured)} were measured"
        )
    verdicts = []
    for workload, base in expected.items():
        value = measured[workload]
        if not (base > 0 and value > 0):
            raise MeasurementFailed(f"{workload}: baseline {base} ms, measured {value} ms")
        verdicts.append(Verdict(workload, base, value, base * margin))
    return verdicts


def round_ratios(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Each translated workload's median, over rounds, of its CPU per request divided by that
    of the chat workload it translates to, in the same round."""
    ratios = {}
    for workload, chat in TRANSLATED.items():
        pairs = list(zip(runs.get(workload, []), runs.get(chat, []), strict=False))
        if pairs:
            ratios[workload] = statistics.median(
                mine["cpu_ms_per_request"] / theirs["cpu_ms_per_request"] for mine, theirs in pairs
            )
    return ratios


def compare_translations(
    ratios: Mapping[str, float], medians: Mapping[str, float]
) -> list[Verdict]:
    """Each translated workload's round ratio (``round_ratios``) against 1.25, shown in CPU ms
    per request of its chat workload's median.

    Raises:
        MeasurementFailed: a translated workload or its chat workload was not measured.
    """
    missing = [w for w in TRANSLATED if w not in ratios or medians.get(TRANSLATED[w], 0) <= 0]
    if missing:
        raise MeasurementFailed(f"not measured: {sorted(missing)}")
    verdicts = []
    for workload, chat in TRANSLATED.items():
        base = medians[chat]
        verdicts.append(Verdict(workload, base, base * ratios[workload], base * TRANSLATION_MARGIN))
    return verdicts


def run_problems(workload: str, runs: list[dict[str, Any]], min_requests: int) -> list[str]:
    """Why these runs of ``workload`` cannot be trusted (errors, too few requests), if at all."""
    if not runs:
        return [f"{workload}: no runs"]
    problems = []
    for number, run in enumerate(runs, 1):
        if run["errors"]:
            problems.append(f"{workload} run {number}: errors {run['errors']}")
        if run["requests"] < max(min_requests, 1):  # zero requests never pass
            problems.append(
                f"{workload} run {number}: {run['requests']} requests (at least {min_requests})"
            )
        if not run.get("cpu_ms_per_request"):
            problems.append(f"{workload} run {number}: no CPU time measured")
    return problems


def checked_medians(
    runs: Mapping[str, list[dict[str, Any]]], min_requests: int
) -> dict[str, float]:
    """The median CPU ms per request of each guarded workload's runs, once all are trustworthy.

    Raises:
        MeasurementFailed: a workload has no runs, or a run had errors, too few requests or no
            CPU time.
    """
    workloads = dict.fromkeys([*GUARDED, *runs])
    problems = [p for w in workloads for p in run_problems(w, runs.get(w, []), min_requests)]
    if problems:
        raise MeasurementFailed("; ".join(problems))
    return {
        workload: statistics.median(run["cpu_ms_per_request"] for run in workload_runs)
        for workload, workload_runs in runs.items()
    }


def status_of(verdicts: list[Verdict]) -> int:
    """The exit status for these verdicts: ``OK`` or ``REGRESSION``."""
    return OK if verdicts and all(v.ok for v in verdicts) else REGRESSION


def measure_workloads(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every run of each guarded and translated workload on a one-worker gateway, by workload.

    The workloads take turns, one run each per round, so a slower stretch of the machine
    weighs on a translated workload and the chat workload it is held to alike.

    Raises:
        MeasurementFailed: a server did not start or the load generator failed.
    """
    from bench_peers import CLIENT_CPU, WORKLOADS, log_file, measure, serving
    from common import start_fake, stop

    names = [*GUARDED, *TRANSLATED]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        fake, fake_url = start_fake(0, CLIENT_CPU, stderr=log_file("fake"))
        try:
            with serving("fusion-1w", fake_url, args, None) as server:
                for name in names:  # warm-up: connections, lazy imports
                    measure(server, WORKLOADS[name], 10, 1, client=args.client, fake_pid=fake.pid)
                for _ in range(args.repeats):
                    for name in names:
                        run = measure(
                            server, WORKLOADS[name], args.concurrency[0], args.duration,
                            client=args.client, fake_pid=fake.pid,
                        )  # fmt: skip
                        runs[name].append(run)
                        print(
                            f"{name:<22} {run['requests_per_s']:8.1f} req/s  "
                            f"cpu {run['cpu_ms_per_request'] or 0:.3f} ms/req",
                            flush=True,
                        )
        finally:
            stop(fake)
    except (RuntimeError, OSError) as exc:
        raise MeasurementFailed(str(exc)) from exc
    except SystemExit as exc:  # bench_peers/common's wait_for: a server did not start
        raise MeasurementFailed(str(exc.code)) from exc
    return runs


def table(verdicts: list[Verdict], margin: float) -> str:
    rows = [
        f"{'workload':<22} {'against':>9} {'measured':>9} {'limit':>9}  verdict",
    ]
    for v in verdicts:
        against = (
            f"{TRANSLATED[v.workload]} ×{TRANSLATION_MARGIN:g}"
            if v.workload in TRANSLATED
            else f"baseline ×{margin:g}"
        )
        rows.append(
            f"{v.workload:<22} {v.baseline_ms:9.3f} {v.measured_ms:9.3f} {v.limit_ms:9.3f}  "
            + ("ok" if v.ok else "REGRESSION")
            + f"  ({against})"
        )
    return (
        "CPU ms per request (gateway process tree; median of runs against the baseline; a "
        "translation as its chat workload's median × its median ratio over rounds)\n"
        + "\n".join(rows)
    )


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": 1,
        "delay_ms": 0,
        "concurrency": args.concurrency[0],
        "duration_s": args.duration,
        "repeats": args.repeats,
        "client": args.client,
        "log_level": args.log_level,
    }


def write_baseline(path: Path, args: argparse.Namespace, host: dict[str, Any]) -> int:
    from bench_peers import versions

    runs = {w: r for w, r in measure_workloads(args).items() if w in GUARDED}
    figures = checked_medians(runs, args.min_requests)
    baseline = {
        "date": time.strftime("%Y-%m-%d"),
        "command": args.command,
        "machine": host,
        "versions": versions(),
        "settings": settings_of(args),
        "cpu_ms_per_request": {w: round(ms, 4) for w, ms in figures.items()},
        "runs_cpu_ms_per_request": {
            w: [round(run["cpu_ms_per_request"], 4) for run in workload_runs]
            for w, workload_runs in runs.items()
        },
        "runs_requests": {w: [run["requests"] for run in rs] for w, rs in runs.items()},
    }
    path.write_text(json.dumps(baseline, indent=2) + "\n")
    print(f"wrote {path}: " + json.dumps(baseline["cpu_ms_per_request"]))
    return OK


def read_baseline(path: Path) -> dict[str, Any]:
    try:
        baseline: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MeasurementFailed(f"cannot read the baseline {path}: {exc}") from exc
    if not isinstance(baseline.get("cpu_ms_per_request"), dict):
        raise MeasurementFailed(f"{path}: no cpu_ms_per_request (write it with --write-baseline)")
    return baseline


def guard(
    path: Path, baseline: dict[str, Any], args: argparse.Namespace, host: dict[str, Any]
) -> int:
    runs = measure_workloads(args)
    medians = checked_medians(runs, args.min_requests)
    verdicts = compare(baseline, {w: medians[w] for w in GUARDED}, args.margin)
    verdicts += compare_translations(round_ratios(runs), medians)
    print(table(verdicts, args.margin))
    for name, value in settings_of(args).items():
        if baseline.get("settings", {}).get(name, value) != value:
            print(f"note: {name} is {value!r} here, {baseline['settings'][name]!r} in the baseline")
    where = baseline.get("machine", {})
    if (where.get("cpu_model"), where.get("nproc")) != (host["cpu_model"], host["nproc"]):
        print(
            f"note: baseline from {where.get('nproc')} × {where.get('cpu_model')} on "
            f"{baseline.get('date')}; this machine is {host['nproc']} × {host['cpu_model']}"
        )
    status = status_of(verdicts)
    if status == OK:
        print("CPU guard: ok")
    else:
        print(f"CPU guard: REGRESSION (more than {args.margin:g}× the baseline in {path})")
    return status


def run(args: argparse.Namespace) -> int:
    """Measure, then write the baseline or compare with it."""
    baseline = None if args.write_baseline else read_baseline(args.guard)
    # The harness is imported here, not at the top: a gateway package that does not import is
    # then a failed measurement (exit 2), and the comparison above stays importable without it.
    from bench_peers import CLIENT_CPU, machine

    # What bench_peers.run_server reads from its arguments.
    args.concurrency = [args.concurrency]
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "aiohttp"
    host = machine()  # before pinning: nproc counts the CPUs this process may use
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    if baseline is None:
        return write_baseline(args.write_baseline, args, host)
    return guard(args.guard, baseline, args, host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--guard", type=Path, metavar="BASELINE", help="compare with this baseline")
    mode.add_argument("--write-baseline", type=Path, metavar="PATH", help="measure, write PATH")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="limit: × baseline")
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=7, help="runs per workload (median)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--min-requests", type=int, default=DEFAULT_MIN_REQUESTS, help="per run, else exit 2"
    )
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--log-level", default="info", help="the gateway's FUSION_LOG_LEVEL")
    args = parser.parse_args(argv)
    if args.margin <= 0 or args.duration < 1 or args.repeats < 1:
        parser.error("--margin must be positive, --duration and --repeats at least 1")
    args.command = "python bench/cpu_guard.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        status = run(args)
    except MeasurementFailed as exc:
        print(f"CPU guard: FAILED to measure: {exc}", file=sys.stderr)
        status = FAILED
    except Exception:  # a crash is a failed measurement, not a regression (exit 1)
        traceback.print_exc()
        print("CPU guard: FAILED to measure (the traceback above)", file=sys.stderr)
        status = FAILED
    print(f"wall time {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
