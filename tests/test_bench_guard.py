"""The CPU regression guard's verdicts (`bench/cpu_guard.py`, run for real by `make bench-guard`).

Only the comparison and the checks on the runs are exercised here, with made-up figures: no
server is started.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import ROOT

BASELINE_FILE = ROOT / "bench" / "peers" / "cpu-baseline.json"
BASELINE = {"cpu_ms_per_request": {"passthrough": 0.5, "fused": 1.5}}


@pytest.fixture(scope="module")
def guard() -> Iterator[types.ModuleType]:
    """bench/cpu_guard.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cpu_guard", ROOT / "bench" / "cpu_guard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_guard"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["cpu_guard"]


def run(requests: int = 1000, cpu_ms: float = 0.5, **errors: int) -> dict[str, Any]:
    """One run's figures, as bench_peers.measure returns them (the fields the guard reads)."""
    return {"requests": requests, "cpu_ms_per_request": cpu_ms, "errors": errors}


def test_within_the_margin_passes(guard: types.ModuleType) -> None:
    """Measured figures below baseline × margin are ok; the limit is baseline × margin."""
    verdicts = guard.compare(BASELINE, {"passthrough": 0.9, "fused": 1.4}, 2.0)
    assert [(v.workload, v.limit_ms, v.ok) for v in verdicts] == [
        ("passthrough", 1.0, True),
        ("fused", 3.0, True),
    ]


def test_a_regression_fails(guard: types.ModuleType) -> None:
    """One workload over its limit is a regression, the other still ok."""
    verdicts = guard.compare(BASELINE, {"passthrough": 0.6, "fused": 3.1}, 2.0)
    assert {v.workload: v.ok for v in verdicts} == {"passthrough": True, "fused": False}


def test_the_margin_is_settable(guard: types.ModuleType) -> None:
    """The same figure passes a 2× margin and fails a 1.1× one."""
    measured = {"passthrough": 0.6, "fused": 1.5}
    assert all(v.ok for v in guard.compare(BASELINE, measured, 2.0))
    assert not all(v.ok for v in guard.compare(BASELINE, measured, 1.1))


@pytest.mark.parametrize(
    "measured",
    [
        pytest.param({"passthrough": 0.5}, id="a workload not measured"),
        pytest.param({"passthrough": 0.5, "fused": 1.5, "cache-hit": 0.4}, id="no baseline"),
        pytest.param({}, id="nothing measured"),
        pytest.param({"passthrough": 0.0, "fused": 1.5}, id="zero CPU"),
    ],
)
def test_what_cannot_be_compared_is_a_failed_measurement(
    guard: types.ModuleType, measured: dict[str, float]
) -> None:
    """Missing or empty figures never pass: they raise MeasurementFailed (exit 2)."""
    with pytest.raises(guard.MeasurementFailed):
        guard.compare(BASELINE, measured, 2.0)


def test_good_runs_have_no_problems(guard: types.ModuleType) -> None:
    assert guard.run_problems("fused", [run(), run(), run()], min_requests=200) == []


@pytest.mark.parametrize(
    ("runs", "problem"),
    [
        pytest.param([], "no runs", id="no runs"),
        pytest.param([run(), run(requests=0), run()], "run 2: 0 requests", id="zero requests"),
        pytest.param([run(requests=150)], "150 requests (at least 200)", id="too few requests"),
        pytest.param([run(**{"non-2xx": 3})], "errors {'non-2xx': 3}", id="errors"),
        pytest.param([run(cpu_ms=0.0)], "no CPU time", id="no CPU"),
    ],
)
def test_untrustworthy_runs_are_reported(
    guard: types.ModuleType, runs: list[dict[str, Any]], problem: str
) -> None:
    problems = guard.run_problems("fused", runs, min_requests=200)
    assert any(problem in text for text in problems), problems


def test_the_median_of_the_runs_is_compared(guard: types.ModuleType) -> None:
    """One outlier run out of three does not move the figure."""
    runs = {
        "passthrough": [run(cpu_ms=0.5)] * 3,
        "fused": [run(cpu_ms=1.4), run(cpu_ms=9.0), run(cpu_ms=1.5)],
    }
    assert guard.checked_medians(runs, min_requests=200) == {"passthrough": 0.5, "fused": 1.5}


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param({"passthrough": [run()] * 3}, id="a workload without runs"),
        pytest.param({}, id="no runs at all"),
        pytest.param(
            {"passthrough": [run()] * 3, "fused": [run(), run(requests=0), run()]},
            id="one run without requests",
        ),
        pytest.param(
            {"passthrough": [run()] * 3, "fused": [run(ClientOSError=1)] * 3}, id="errors"
        ),
    ],
)
def test_untrustworthy_runs_are_never_compared(
    guard: types.ModuleType, runs: dict[str, list[dict[str, Any]]]
) -> None:
    """Any problem with a run is a failed measurement (exit 2), even if the median looks fine."""
    with pytest.raises(guard.MeasurementFailed):
        guard.checked_medians(runs, min_requests=200)


def test_zero_requests_fail_even_with_no_minimum(guard: types.ModuleType) -> None:
    """``--min-requests 0`` still does not let a run without requests through."""
    assert guard.run_problems("fused", [run(requests=0)], min_requests=0)


@pytest.mark.parametrize(
    ("measured", "status"),
    [
        pytest.param({"passthrough": 0.5, "fused": 1.6}, 0, id="ok"),
        pytest.param({"passthrough": 0.5, "fused": 3.2}, 1, id="fused regressed"),
        pytest.param({"passthrough": 1.2, "fused": 1.6}, 1, id="passthrough regressed"),
    ],
)
def test_exit_status(guard: types.ModuleType, measured: dict[str, float], status: int) -> None:
    """0 when every workload is within its limit, 1 when any one is over it."""
    assert guard.status_of(guard.compare(BASELINE, measured, 2.0)) == status


def test_no_verdicts_is_not_a_pass(guard: types.ModuleType) -> None:
    assert guard.status_of([]) != 0


def test_a_missing_baseline_fails_without_measuring(
    guard: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """No baseline file: exit 2 at once, before any server starts."""
    assert guard.main(["--guard", "/nonexistent/cpu-baseline.json"]) == 2
    assert "cannot read the baseline /nonexistent/cpu-baseline.json" in capsys.readouterr().err


def test_the_committed_baseline_is_complete(guard: types.ModuleType) -> None:
    """bench/peers/cpu-baseline.json (`make bench-baseline`) says where and how it was measured."""
    baseline = json.loads(BASELINE_FILE.read_text())
    assert set(baseline["cpu_ms_per_request"]) == set(guard.GUARDED)
    assert all(value > 0 for value in baseline["cpu_ms_per_request"].values())
    assert baseline["date"] and baseline["command"].startswith("python bench/cpu_guard.py")
    assert {"nproc", "cpu_model"} <= set(baseline["machine"])
    assert baseline["settings"]["workers"] == 1 and baseline["settings"]["delay_ms"] == 0


CHAT_FIGURES = {"passthrough": 0.6, "fused": 1.4}


@pytest.mark.parametrize(
    ("ratio", "ok"),
    [pytest.param(1.25, True, id="exactly 25% more"), pytest.param(1.27, False, id="over 25%")],
)
def test_translated_apis_are_held_to_their_chat_workload(
    guard: types.ModuleType, ratio: float, ok: bool
) -> None:
    """The Responses and Messages workloads may cost at most 25% more CPU than the chat
    workload they translate to."""
    ratios = dict.fromkeys(guard.TRANSLATED, 1.0) | {"messages-passthrough": ratio}
    verdicts = {v.workload: v for v in guard.compare_translations(ratios, CHAT_FIGURES)}
    assert set(verdicts) == set(guard.TRANSLATED)
    assert verdicts["messages-passthrough"].ok is ok
    assert verdicts["messages-passthrough"].limit_ms == pytest.approx(0.6 * 1.25)
    assert all(verdicts[w].ok for w in guard.TRANSLATED if w != "messages-passthrough")


def test_an_unmeasured_translation_is_a_failed_measurement(guard: types.ModuleType) -> None:
    ratios = dict.fromkeys(guard.TRANSLATED, 1.0)
    del ratios["responses-fused"]
    with pytest.raises(guard.MeasurementFailed, match="responses-fused"):
        guard.compare_translations(ratios, CHAT_FIGURES)


def test_a_round_disturbed_by_the_machine_does_not_decide(guard: types.ModuleType) -> None:
    """Ratios are taken round by round (neighbouring runs) and their median is judged: one
    round where the chat run was lucky and the translated one was not moves nothing."""
    runs = {
        "passthrough": [run(cpu_ms=0.40), run(cpu_ms=0.30), run(cpu_ms=0.50)],
        "messages-passthrough": [run(cpu_ms=0.44), run(cpu_ms=0.45), run(cpu_ms=0.55)],
    }
    assert guard.round_ratios(runs)["messages-passthrough"] == pytest.approx(1.1)
