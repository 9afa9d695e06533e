"""The eval harness end to end: run_eval against the fake upstream, scripted so that fusion,
each member and the judge alone have different, known accuracies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fusion_engine.errors import UnknownPanelError
from fusion_engine.evals.cli import run
from fusion_engine.evals.items import EvalItem, write_items
from fusion_engine.evals.options import add_arguments
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import ROOT, GatewayProcess, gateway_env

N = 10
GATEWAY_KEY = "eval-gateway-key"
#: How many of the N questions (the first ones) each system gets right.
RIGHT = {"m/a": 6, "m/b": 4, "judge_alone": 5, "fusion": 9}


def answer(i: int, right: int) -> Reply:
    return Reply(text=f"Working... so the result is\n#### {2 * i if i < right else 999}")


def script(fake: FakeUpstream) -> None:
    for i in range(N):
        question = rf"Q{i}:"
        fake.script_matching("m/a", question, answer(i, RIGHT["m/a"]))
        fake.script_matching("m/b", question, answer(i, RIGHT["m/b"]))
        # The judge inside a fusion sees the candidates; alone it sees only the question.
        fake.script_matching("m/j", rf"{question}.*### Answer 1", answer(i, RIGHT["fusion"]))
        fake.script_matching("m/j", question, answer(i, RIGHT["judge_alone"]))


@pytest.fixture
def workspace(tmp_path: Path, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A panel file, a dataset and an environment pointing at the fake."""
    panels = tmp_path / "panels"
    panels.mkdir()
    (panels / "duo.yaml").write_text(
        "name: duo\nmodels:\n  - slug: m/a\n  - slug: m/b\njudge_model: m/j\n"
    )
    items = [
        EvalItem(id=f"q{i}", prompt=f"Q{i}: what is {i}+{i}?", target=str(2 * i), grader="numeric")
        for i in range(N)
    ]
    write_items(tmp_path / "numbers.jsonl", items)
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENROUTER_API_KEY", "x")
    monkeypatch.setenv("FUSION_PANELS_DIR", str(panels))
    monkeypatch.setenv("FUSION_JUDGES_DIR", str(ROOT / "judges"))
    monkeypatch.setenv("FUSION_CONFIG", str(ROOT / "config" / "gateway.yaml"))
    script(fake)
    return tmp_path


def arguments(workspace: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        [
            "--panel", "duo", "--dataset", str(workspace / "numbers.jsonl"),
            "--out", str(workspace / "out"), "--cache-dir", str(workspace / "cache"),
            "--no-progress", *extra,
        ]
    )  # fmt: skip


def summary(workspace: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((workspace / "out" / "summary.json").read_text())
    return loaded


async def test_report_numbers_match_the_script(workspace: Path, fake: FakeUpstream) -> None:
    """Accuracy per system, the best single member, W/T/L and deltas are what the script implies."""
    assert await run(arguments(workspace)) == 0
    data = summary(workspace)
    accuracy = {s["system"]: s["accuracy"] for s in data["summaries"]}  # type: ignore[attr-defined]
    assert accuracy == {
        "fusion:duo": 0.9, "single:m/a": 0.6, "single:m/b": 0.4, "judge_alone:m/j": 0.5,
    }  # fmt: skip
    versus = {c["baseline"]: c for c in data["comparisons"]}  # type: ignore[attr-defined]
    assert set(versus) == {"single:m/a", "judge_alone:m/j"}
    best = versus["single:m/a"]
    assert (best["wins"], best["ties"], best["losses"]) == (3, 7, 0)
    assert best["delta_accuracy"] == pytest.approx(0.3)
    alone = versus["judge_alone:m/j"]
    assert (alone["wins"], alone["ties"], alone["losses"]) == (4, 6, 0)
    assert alone["delta_accuracy"] == pytest.approx(0.4)
    assert alone["cost_multiple"] > 1  # a fusion costs more than one call
    report = (workspace / "out" / "report.md").read_text()
    assert "fusion:duo" in report and "single:m/a" in report
    assert (workspace / "out" / "chart.png").read_bytes().startswith(b"\x89PNG")
    records = (workspace / "out" / "records.jsonl").read_text().splitlines()
    assert len(records) == 4 * N


async def test_rerun_costs_nothing(workspace: Path, fake: FakeUpstream) -> None:
    """A second run over the same output folder makes no upstream call."""
    assert await run(arguments(workspace)) == 0
    calls = len(fake.received)
    assert await run(arguments(workspace)) == 0
    assert len(fake.received) == calls


async def test_disk_cache_answers_a_fresh_output_folder(
    workspace: Path, fake: FakeUpstream
) -> None:
    """With the records gone, every answer comes from the disk cache: no upstream call."""
    assert await run(arguments(workspace)) == 0
    calls = len(fake.received)
    (workspace / "out" / "records.jsonl").unlink()
    assert await run(arguments(workspace)) == 0
    assert len(fake.received) == calls
    assert summary(workspace)["summaries"][0]["accuracy"] == 0.9  # type: ignore[index]


async def test_interrupted_run_resumes_where_it_stopped(
    workspace: Path, fake: FakeUpstream
) -> None:
    """After a crash (records cut short, a torn last line) exactly the missing pairs are run."""
    assert await run(arguments(workspace)) == 0
    records = workspace / "out" / "records.jsonl"
    lines = records.read_text().splitlines()
    kept = lines[: len(lines) // 2]
    records.write_text("\n".join(kept) + "\n" + lines[-1][:25])  # the last line torn mid-write
    done = {(json.loads(line)["system"], json.loads(line)["item_id"]) for line in kept}
    missing = {(json.loads(line)["system"], json.loads(line)["item_id"]) for line in lines} - done
    fused_missing = sum(1 for system, _ in missing if system.startswith("fusion:"))
    expected_calls = fused_missing * 3 + (len(missing) - fused_missing)  # a fusion is 3 calls
    fake.received.clear()
    assert await run(arguments(workspace, "--cache-dir", str(workspace / "fresh-cache"))) == 0
    assert len(fake.received) == expected_calls
    assert summary(workspace)["summaries"][0]["accuracy"] == 0.9  # type: ignore[index]


async def test_only_selected_systems_run(workspace: Path, fake: FakeUpstream) -> None:
    """--systems single runs the members alone: no judge call at all."""
    assert await run(arguments(workspace, "--systems", "single")) == 0
    assert {r.model for r in fake.received} == {"m/a", "m/b"}
    assert [s["system"] for s in summary(workspace)["summaries"]] == ["single:m/a", "single:m/b"]  # type: ignore[attr-defined]


async def test_members_and_judge_alone_are_asked_with_the_panels_settings(
    workspace: Path, fake: FakeUpstream
) -> None:
    """single:<m> sends what the panel sends that member (temperature, max_tokens, seed) and
    judge_alone the judge's temperature: the baselines run under the panel's conditions."""
    (workspace / "panels" / "duo.yaml").write_text(
        "name: duo\nmodels:\n"
        "  - slug: m/a\n    temperature: 0.3\n    max_tokens: 77\n    seed: 5\n"
        "  - slug: m/b\njudge_model: m/j\njudge_temperature: 0.1\n"
    )
    assert await run(arguments(workspace, "--systems", "single,judge_alone", "--limit", "1")) == 0
    sent = {r.model: r.body for r in fake.received}
    assert (sent["m/a"]["temperature"], sent["m/a"]["max_tokens"], sent["m/a"]["seed"]) == (
        0.3,
        77,
        5,
    )
    assert "temperature" not in sent["m/b"] and "max_tokens" not in sent["m/b"]
    assert sent["m/j"]["temperature"] == 0.1
    assert [m["role"] for m in sent["m/j"]["messages"]] == ["user"]


async def test_eval_through_a_running_gateway(workspace: Path, fake: FakeUpstream) -> None:
    """--base-url: the panel comes from the gateway's GET /panels/<name> and every system is
    asked through it, all over the project's upstream client; an unknown panel is named."""
    env = gateway_env(
        fake, GATEWAY_KEY, panels=workspace / "panels", config=ROOT / "config" / "gateway.yaml"
    )
    gateway = GatewayProcess(env)
    try:
        through = ("--base-url", gateway.base_url, "--api-key", GATEWAY_KEY)
        assert await run(arguments(workspace, *through)) == 0
        accuracy = {s["system"]: s["accuracy"] for s in summary(workspace)["summaries"]}  # type: ignore[attr-defined]
        assert accuracy == {
            "fusion:duo": 0.9, "single:m/a": 0.6, "single:m/b": 0.4, "judge_alone:m/j": 0.5,
        }  # fmt: skip
        with pytest.raises(UnknownPanelError, match="the gateway has no panel 'nope'"):
            await run(arguments(workspace, *through, "--panel", "nope"))
    finally:
        gateway.stop()
