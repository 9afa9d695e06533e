"""Benchmark: what consensus_skip_judge and cascade save against plain fusion.

A scripted workload of ``--questions`` questions, 70 % easy (every member gives the same final
answer) and 30 % hard (members disagree). Members answer in ``--delay-ms``, the judge too;
members are cheap and the judge dear (fake prices). For each strategy: total cost, p50 latency,
judge calls, and whether the easy questions got the same final answer as plain fusion.

    python bench/bench_strategies.py [--questions 40] [--delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from common import engine_settings

from fusion_engine import FusionEngine, Panel, PanelMember
from fusion_engine.agreement import final_answer
from fusion_engine.testing import FakeUpstream, Reply

MEMBERS = ("s/cheap-1", "s/cheap-2", "s/strong")
JUDGE = "s/judge"
PRICES = dict.fromkeys(MEMBERS, (1e-07, 2e-07)) | {JUDGE: (3e-6, 1.5e-5)}
PANELS = {
    "fusion": {},
    "consensus_skip_judge": {"consensus_skip_judge": 0.66},
    "cascade": {"strategy": "cascade", "consensus_skip_judge": 1.0},
}


def script(fake: FakeUpstream, questions: int, delay_s: float) -> list[bool]:
    """Script members and judge per question; returns which questions are easy."""
    easy = [i % 10 < 7 for i in range(questions)]
    for i in range(questions):
        pattern = rf"\bQ{i}\b"
        for n, member in enumerate(MEMBERS):
            value = i if easy[i] else i + n  # hard: every member says something else
            fake.script_matching(member, pattern, Reply(text=f"#### {value}", delay_s=delay_s))
        fake.script_matching(JUDGE, pattern, Reply(text=f"#### {i}", delay_s=delay_s))
    return easy


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with FakeUpstream(prices=PRICES) as fake:
        easy = script(fake, args.questions, args.delay_ms / 1000)
        settings = engine_settings(fake.base_url)
        async with FusionEngine(settings=settings) as engine:
            answers: dict[str, list[str | None]] = {}
            for name, options in PANELS.items():
                panel = Panel(
                    name=name.replace("_", "-"),
                    models=[PanelMember(slug=m) for m in MEMBERS],
                    judge_model=JUDGE,
                    **options,  # type: ignore[arg-type]
                )
                before = len(fake.requests_for(JUDGE))
                latencies, costs, finals = [], [], []
                for i in range(args.questions):
                    started = time.perf_counter()
                    result = await engine.fuse(f"Q{i}: a question", panel=panel)
                    latencies.append((time.perf_counter() - started) * 1000)
                    costs.append(result.total_cost or 0.0)
                    finals.append(final_answer(result.answer or ""))
                answers[name] = finals
                results[name] = {
                    "total_cost_usd": sum(costs),
                    "p50_ms": statistics.median(latencies),
                    "judge_calls": len(fake.requests_for(JUDGE)) - before,
                }
            for name in PANELS:
                same = sum(
                    1
                    for i in range(args.questions)
                    if easy[i] and answers[name][i] == answers["fusion"][i]
                )
                results[name]["easy_same_as_fusion"] = f"{same}/{sum(easy)}"
    base = results["fusion"]["total_cost_usd"]
    print(
        "| strategy | total cost | vs fusion | p50 latency | judge calls | easy answers = fusion |"
    )
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        share = row["total_cost_usd"] / base if base else 0
        print(
            f"| {name} | ${row['total_cost_usd']:.6f} | {share:.0%} | {row['p50_ms']:.0f} ms | "
            f"{row['judge_calls']} | {row['easy_same_as_fusion']} |"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--delay-ms", type=int, default=50)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
