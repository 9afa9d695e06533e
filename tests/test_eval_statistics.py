"""Eval statistics and report: Wilson, McNemar, paired bootstrap, summaries, comparisons, output."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_engine.evals.records import ItemRecord
from fusion_engine.evals.report import render_chart, render_markdown
from fusion_engine.evals.statistics import (
    Comparison,
    best_single,
    compare,
    mcnemar_exact,
    paired_bootstrap_ci,
    summarize,
    wilson_interval,
    win_tie_loss,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rec(
    system: str,
    item: int,
    correct: bool,
    *,
    cost: float | None = 0.01,
    latency: float = 100.0,
    error: str | None = None,
) -> ItemRecord:
    return ItemRecord(
        system=system,
        item_id=f"q{item}",
        correct=correct,
        cost_usd=cost,
        latency_ms=latency,
        tokens_in=10,
        tokens_out=20,
        error=error,
    )


def system_records(
    system: str, outcomes: list[bool], *, cost: float | None = 0.01
) -> list[ItemRecord]:
    return [rec(system, i, ok, cost=cost) for i, ok in enumerate(outcomes)]


# --- Wilson -------------------------------------------------------------------------------


def test_wilson_matches_known_value() -> None:
    """8/10 at 95% gives the textbook Wilson interval (0.490, 0.943)."""
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4)
    assert high == pytest.approx(0.9433, abs=5e-4)


def test_wilson_stays_inside_unit_interval_at_the_extremes() -> None:
    """0/n starts at exactly 0 and n/n ends at exactly 1, with non-zero width."""
    assert wilson_interval(0, 20)[0] == 0.0
    assert 0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(20, 20)[1] == 1.0
    assert 0.8 < wilson_interval(20, 20)[0] < 1


def test_wilson_holds_a_perfect_or_zero_score_exactly() -> None:
    """n/n reaches exactly 1 and 0/n starts at exactly 0, for every n (no float dust)."""
    for n in range(1, 201):
        assert wilson_interval(n, n)[1] == 1.0, n
        assert wilson_interval(0, n)[0] == 0.0, n
        for correct in range(n + 1):
            low, high = wilson_interval(correct, n)
            assert 0.0 <= low <= correct / n <= high <= 1.0, (correct, n)


def test_wilson_with_no_trials_is_uninformative() -> None:
    """No data means the whole unit interval."""
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- McNemar and win/tie/loss ------------------------------------------------------------


def test_mcnemar_exact_one_against_nine() -> None:
    """b=1, c=9 discordant pairs: two-sided binomial p = 2 * 11/1024."""
    a = [True] * 1 + [False] * 9 + [True] * 5
    b = [False] * 1 + [True] * 9 + [True] * 5
    assert mcnemar_exact(a, b) == pytest.approx(0.021484375, rel=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(0.021484375, rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    """Two systems that agree everywhere give p = 1."""
    assert mcnemar_exact([True, False, True], [True, False, True]) == 1.0
    assert mcnemar_exact([], []) == 1.0


def test_mcnemar_symmetric_discordance_is_one() -> None:
    """As many wins as losses is no evidence either way."""
    a = [True, True, True, False, False, False]
    b = [False, False, False, True, True, True]
    assert mcnemar_exact(a, b) == pytest.approx(1.0)


def test_win_tie_loss_counts_from_a_side() -> None:
    """Only a right is a win, only b right is a loss, agreement either way is a tie."""
    a = [True, True, False, False, True]
    b = [False, True, True, False, False]
    assert win_tie_loss(a, b) == (2, 2, 1)


def test_paired_functions_reject_unequal_lengths() -> None:
    """Pairs need one outcome per item on each side."""
    with pytest.raises(ValueError, match="length"):
        win_tie_loss([True], [True, False])
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True], [])


# --- Bootstrap ---------------------------------------------------------------------------


def test_bootstrap_identical_vectors_is_zero() -> None:
    """No difference on any item: point and interval are all zero."""
    a = [True, False, True, True, False]
    assert paired_bootstrap_ci(a, list(a)) == (0.0, 0.0, 0.0)


def test_bootstrap_all_right_against_all_wrong_is_one() -> None:
    """a right and b wrong everywhere: the difference is 1 in every resample."""
    assert paired_bootstrap_ci([True] * 12, [False] * 12) == (1.0, 1.0, 1.0)


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    """The same seed gives the same interval; a different seed may not."""
    a = [i % 3 != 0 for i in range(60)]
    b = [i % 2 == 0 for i in range(60)]
    first = paired_bootstrap_ci(a, b, iterations=2000, seed=7)
    assert paired_bootstrap_ci(a, b, iterations=2000, seed=7) == first
    assert paired_bootstrap_ci(a, b, iterations=2000, seed=8)[0] == first[0]


def test_bootstrap_interval_contains_point_estimate() -> None:
    """The percentile interval brackets the observed mean difference."""
    a = [i % 4 != 0 for i in range(80)]
    b = [i % 2 == 0 for i in range(80)]
    delta, low, high = paired_bootstrap_ci(a, b)
    assert delta == pytest.approx(0.75 - 0.5)
    assert low < delta < high
    assert low >= -1 and high <= 1


def test_bootstrap_narrower_at_lower_confidence() -> None:
    """An 80% interval sits inside the 95% one from the same resamples."""
    a = [i % 4 != 0 for i in range(80)]
    b = [i % 2 == 0 for i in range(80)]
    _, low95, high95 = paired_bootstrap_ci(a, b, confidence=0.95)
    _, low80, high80 = paired_bootstrap_ci(a, b, confidence=0.80)
    assert low95 <= low80 < high80 <= high95


def test_bootstrap_rejects_empty_and_bad_arguments() -> None:
    """Nothing to resample, or nonsense settings, is an error rather than a silent NaN."""
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="iterations"):
        paired_bootstrap_ci([True], [False], iterations=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([True], [False], confidence=1.0)


# --- summarize ---------------------------------------------------------------------------


def test_summarize_one_per_system_in_first_seen_order() -> None:
    """Systems come out in the order they first appear, with their counts."""
    records = [
        rec("single:b", 0, True),
        rec("fusion:p", 0, True),
        rec("single:b", 1, False),
        rec("fusion:p", 1, True),
    ]
    summaries = summarize(records)
    assert [s.system for s in summaries] == ["single:b", "fusion:p"]
    assert (summaries[0].items, summaries[0].correct, summaries[0].accuracy) == (2, 1, 0.5)
    assert summaries[1].accuracy == 1.0


def test_summarize_costs_latency_and_tokens() -> None:
    """Known costs add up; percentiles and token means come from all records."""
    records = [
        rec("single:a", i, i < 3, cost=0.002, latency=float(100 * (i + 1))) for i in range(4)
    ]
    (s,) = summarize(records)
    assert s.total_cost_usd == pytest.approx(0.008)
    assert s.mean_cost_usd == pytest.approx(0.002)
    assert s.accuracy_per_dollar == pytest.approx(0.75 / 0.002)
    assert s.p50_latency_ms == pytest.approx(250.0)
    assert s.p95_latency_ms == pytest.approx(385.0)
    assert (s.mean_tokens_in, s.mean_tokens_out) == (10.0, 20.0)
    assert s.accuracy_ci == wilson_interval(3, 4)


def test_summarize_unknown_cost_is_none_not_zero() -> None:
    """One record without a cost makes mean, total and accuracy per dollar unknown."""
    records = [rec("single:a", 0, True, cost=0.01), rec("single:a", 1, True, cost=None)]
    (s,) = summarize(records)
    assert s.mean_cost_usd is None
    assert s.total_cost_usd is None
    assert s.accuracy_per_dollar is None


def test_summarize_zero_cost_has_no_accuracy_per_dollar() -> None:
    """A free system has a known $0 cost but no finite accuracy per dollar."""
    (s,) = summarize(system_records("single:free", [True, False], cost=0.0))
    assert s.mean_cost_usd == 0.0
    assert s.accuracy_per_dollar is None


def test_summarize_errors_count_as_incorrect() -> None:
    """A failed call is wrong even if a stale correct flag says otherwise."""
    records = [rec("single:a", 0, True, error="timeout"), rec("single:a", 1, True)]
    (s,) = summarize(records)
    assert (s.correct, s.errors, s.accuracy) == (1, 1, 0.5)


# --- compare and best_single -------------------------------------------------------------


def test_compare_pairs_shared_items_and_counts_wtl() -> None:
    """Only items both systems answered are paired; W/T/L and costs follow from them."""
    fusion = [True, True, False, True, False]
    single = [False, True, True, True, False]
    records = [
        *system_records("fusion:p", fusion, cost=0.03),
        *system_records("single:m", single, cost=0.01),
        rec("fusion:p", 99, True, cost=5.0),  # unpaired: ignored, including its cost
    ]
    c = compare(records, "fusion:p", "single:m", iterations=500)
    assert isinstance(c, Comparison)
    assert (c.system, c.baseline, c.items) == ("fusion:p", "single:m", 5)
    assert (c.wins, c.ties, c.losses) == (1, 3, 1)
    assert c.delta_accuracy == pytest.approx(0.0)
    assert c.mcnemar_p == 1.0
    assert c.cost_multiple == pytest.approx(3.0)
    assert not c.significant


def test_compare_cost_multiple_unknown_when_any_cost_unknown() -> None:
    """An unknown cost on either side of a shared item makes the multiple unknown."""
    records = [
        *system_records("fusion:p", [True, True], cost=0.02),
        rec("single:m", 0, True, cost=0.01),
        rec("single:m", 1, False, cost=None),
    ]
    assert compare(records, "fusion:p", "single:m", iterations=100).cost_multiple is None


def test_compare_clear_win_is_significant() -> None:
    """40/40 against 0/40 excludes zero and has a tiny McNemar p."""
    records = [*system_records("fusion:p", [True] * 40), *system_records("single:m", [False] * 40)]
    c = compare(records, "fusion:p", "single:m")
    assert (c.delta_accuracy, c.ci_low, c.ci_high) == (1.0, 1.0, 1.0)
    assert c.mcnemar_p < 1e-9
    assert c.significant


def test_compare_rejects_disjoint_systems_and_duplicate_records() -> None:
    """No shared items, or two records for one item, cannot be paired."""
    disjoint = [rec("fusion:p", 0, True), rec("single:m", 1, True)]
    with pytest.raises(ValueError, match="share no items"):
        compare(disjoint, "fusion:p", "single:m")
    duplicated = [rec("fusion:p", 0, True), rec("fusion:p", 0, False), rec("single:m", 0, True)]
    with pytest.raises(ValueError, match="more than one record"):
        compare(duplicated, "fusion:p", "single:m")


def test_best_single_breaks_ties_by_cost_then_name() -> None:
    """Highest accuracy wins; equal accuracy goes to the cheaper, then the earlier name."""
    records = [
        *system_records("fusion:p", [True, True, True]),
        *system_records("judge_alone:j", [True, True, True]),
        *system_records("single:z-cheap", [True, True, False], cost=0.001),
        *system_records("single:a-dear", [True, True, False], cost=0.01),
        *system_records("single:b-unknown", [True, True, False], cost=None),
        *system_records("single:weak", [True, False, False], cost=0.0),
    ]
    summaries = summarize(records)
    assert best_single(summaries) == "single:z-cheap"
    same_cost = summarize(
        [*system_records("single:b", [True], cost=0.01), *system_records("single:a", [True])]
    )
    assert best_single(same_cost) == "single:a"
    assert best_single(summarize(system_records("fusion:p", [True]))) is None


# --- report ------------------------------------------------------------------------------


def _report(records: list[ItemRecord], baseline: str) -> str:
    summaries = summarize(records)
    comparison = compare(records, "fusion:p", baseline, iterations=2000)
    return render_markdown(
        summaries,
        [comparison],
        title="Fusion eval",
        dataset="mini.jsonl",
        panel="p",
        n_items=len({r.item_id for r in records}),
    )


def test_report_says_within_noise_when_not_significant() -> None:
    """A small difference reads as within noise, with its CI and McNemar p."""
    fusion = [True] * 11 + [False] * 9
    single = [True] * 10 + [False] * 10
    text = _report(
        [*system_records("fusion:p", fusion), *system_records("single:m", single)], "single:m"
    )
    assert "fusion:p vs single:m: +5.0 points, within noise (95% CI" in text
    assert "McNemar p = 1.00" in text
    assert "# Fusion eval" in text and "`mini.jsonl`" in text and "items: 20" in text


def test_report_does_not_hedge_a_clear_win() -> None:
    """40/40 against 0/40 is reported as significantly better, never as noise."""
    text = _report(
        [*system_records("fusion:p", [True] * 40), *system_records("single:m", [False] * 40)],
        "single:m",
    )
    assert "within noise" not in text
    assert "+100.0 points, significantly better" in text
    assert "McNemar p < 0.001" in text
    assert "at 1.00× the cost" in text
    assert "| 40 / 0 / 0 |" in text


def test_report_shows_unknown_cost_as_unknown() -> None:
    """An unknown cost reads "unknown" in the cost, per-dollar and multiple cells, never $0."""
    records = [
        *system_records("fusion:p", [True, False, True], cost=None),
        *system_records("single:m", [True, False, False], cost=0.0025),
    ]
    text = _report(records, "single:m")
    fusion_row = next(line for line in text.splitlines() if line.startswith("| `fusion:p` |"))
    assert fusion_row.count("unknown") == 2
    assert "$0" not in fusion_row
    assert "$0.00250" in text
    assert "cost multiple unknown" not in text  # not significant, so the verdict skips cost
    comparison_row = next(line for line in text.splitlines() if "vs `single:m`" in line)
    assert comparison_row.rstrip(" |").endswith("unknown")


def test_report_without_comparisons() -> None:
    """A run with nothing to compare still renders its systems."""
    text = render_markdown(
        summarize(system_records("single:m", [True])),
        [],
        title="t",
        dataset="d",
        panel="p",
        n_items=1,
    )
    assert "No comparisons." in text and "`single:m`" in text


def test_report_renders_a_perfect_and_a_zero_score(tmp_path: Path) -> None:
    """A 100% and a 0% system render in the table and the chart (their error bars end at 100 / 0)."""
    records = [
        *system_records("fusion:p", [True] * 10, cost=0.03),
        *system_records("single:m", [False] * 3, cost=0.01),
    ]
    summaries = summarize(records)
    text = render_markdown(summaries, [], title="t", dataset="d", panel="p", n_items=10)
    assert "100.0% (72.2%–100.0%)" in text
    assert "0.0% (0.0%–56.1%)" in text
    path = tmp_path / "chart.png"
    render_chart(summaries, path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_chart_is_a_png(tmp_path: Path) -> None:
    """The chart renders headless to a real PNG, unknown-cost systems included."""
    records = [
        *system_records("fusion:p", [True, True, False], cost=0.03),
        *system_records("single:m", [True, False, False], cost=0.01),
        *system_records("judge_alone:j", [True, True, False], cost=None),
    ]
    path = tmp_path / "out" / "chart.png"
    render_chart(summarize(records), path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
