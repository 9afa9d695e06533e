"""The eval report: Markdown with plain-language verdicts, and an accuracy-vs-cost chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .statistics import Comparison, SystemSummary

UNKNOWN = "unknown"
MINUS = "\N{MINUS SIGN}"

_KIND_STYLE = {
    # kind prefix -> (marker, colour); anything else is drawn as "other".
    "fusion": ("*", "tab:red"),
    "single": ("o", "tab:blue"),
    "judge_alone": ("s", "tab:green"),
}
_OTHER_STYLE = ("D", "tab:gray")


def render_markdown(
    summaries: Sequence[SystemSummary],
    comparisons: Sequence[Comparison],
    *,
    title: str,
    dataset: str,
    panel: str,
    n_items: int,
) -> str:
    """Render the per-system table, the comparisons table and one verdict line per comparison."""
    lines = [
        f"# {title}",
        "",
        f"Dataset: `{dataset}` · panel: `{panel}` · items: {n_items}",
        "",
        "## Systems",
        "",
        *_systems_table(summaries),
        "",
        "## Comparisons",
        "",
    ]
    if comparisons:
        lines += [*_comparisons_table(comparisons), "", "## Verdict", ""]
        lines += [f"- {verdict(comparison)}" for comparison in comparisons]
    else:
        lines.append("No comparisons.")
    return "\n".join(lines) + "\n"


def verdict(comparison: Comparison) -> str:
    """One plain-language sentence: the difference, whether it is beyond noise, and the cost."""
    points = _signed_points(comparison.delta_accuracy)
    evidence = (
        f"95% CI {_signed_points(comparison.ci_low)} to {_signed_points(comparison.ci_high)}, "
        f"McNemar p {_p_value(comparison.mcnemar_p)}"
    )
    head = f"{comparison.system} vs {comparison.baseline}: {points} points"
    if not comparison.significant:
        return f"{head}, within noise ({evidence})."
    direction = "better" if comparison.delta_accuracy > 0 else "worse"
    return f"{head}, significantly {direction} ({evidence}), {_cost_clause(comparison)}."


def _cost_clause(comparison: Comparison) -> str:
    if comparison.cost_multiple is None:
        return "cost multiple unknown"
    return f"at {_multiple(comparison.cost_multiple)} the cost"


def _systems_table(summaries: Sequence[SystemSummary]) -> list[str]:
    rows = [
        "| System | Items | Accuracy (95% CI) | Mean cost / query | Accuracy per $ "
        "| p50 latency | p95 latency | Tokens in / out (mean) | Errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        low, high = s.accuracy_ci
        cells = [
            f"`{s.system}`",
            str(s.items),
            f"{_percent(s.accuracy)} ({_percent(low)}–{_percent(high)})",
            UNKNOWN if s.mean_cost_usd is None else _money(s.mean_cost_usd),
            _per_dollar(s),
            f"{s.p50_latency_ms:,.0f} ms",
            f"{s.p95_latency_ms:,.0f} ms",
            f"{s.mean_tokens_in:,.0f} / {s.mean_tokens_out:,.0f}",
            str(s.errors),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _comparisons_table(comparisons: Sequence[Comparison]) -> list[str]:
    rows = [
        "| Comparison | Items | Δ accuracy (95% CI) | W / T / L | McNemar p | Cost × |",
        "| --- | ---: | ---: | :---: | ---: | ---: |",
    ]
    for c in comparisons:
        cells = [
            f"`{c.system}` vs `{c.baseline}`",
            str(c.items),
            f"{_signed_points(c.delta_accuracy)} pts "
            f"({_signed_points(c.ci_low)} to {_signed_points(c.ci_high)})",
            f"{c.wins} / {c.ties} / {c.losses}",
            _p_value(c.mcnemar_p).removeprefix("= "),
            UNKNOWN if c.cost_multiple is None else _multiple(c.cost_multiple),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _signed_points(fraction: float) -> str:
    points = round(fraction * 100, 1)
    if points == 0:
        return "0.0"
    return f"{'+' if points > 0 else MINUS}{abs(points):.1f}"


def _p_value(p: float) -> str:
    # Written to follow "p": "= 0.31", "< 0.001"; two significant places are all a p-value earns.
    if p < 0.001:
        return "< 0.001"
    if p < 0.01:
        return f"= {p:.3f}"
    return f"= {p:.2f}"


def _money(usd: float) -> str:
    if usd == 0:
        return "$0"
    # About three significant digits: per-query costs run from dollars down to millionths.
    decimals = max(2, 2 - math.floor(math.log10(abs(usd))))
    return f"${usd:.{decimals}f}"


def _multiple(ratio: float) -> str:
    return f"{ratio:.2f}×"


def _per_dollar(summary: SystemSummary) -> str:
    if summary.mean_cost_usd is None:
        return UNKNOWN
    if summary.accuracy_per_dollar is None:
        return "n/a (free)"
    value = summary.accuracy_per_dollar
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def render_chart(summaries: Sequence[SystemSummary], path: Path) -> None:
    """Write a PNG of accuracy (with Wilson CIs) against mean cost per query, one point a system.

    Systems with unknown cost sit at x = 0, labelled "(cost unknown)".
    """
    # A bare Figure on an Agg canvas: no pyplot, so no global figure registry or backend switch,
    # and it renders with no display.
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for s in summaries:
        marker, colour = _KIND_STYLE.get(s.system.partition(":")[0], _OTHER_STYLE)
        known = s.mean_cost_usd is not None
        x = s.mean_cost_usd if s.mean_cost_usd is not None else 0.0
        low, high = s.accuracy_ci
        axes.errorbar(
            [x],
            [s.accuracy * 100],
            # matplotlib refuses negative error bars; an interval is not trusted to hold its
            # point to the last bit (a perfect score's upper bound once came out below 1).
            yerr=[[max(0.0, s.accuracy - low) * 100], [max(0.0, high - s.accuracy) * 100]],
            fmt=marker,
            color=colour,
            markerfacecolor=colour if known else "none",
            markersize=10 if marker == "*" else 7,
            capsize=4,
        )
        label = s.system if known else f"{s.system} (cost unknown)"
        axes.annotate(
            label, (x, s.accuracy * 100), xytext=(6, 6), textcoords="offset points", fontsize=8
        )
    axes.set_xlabel("Mean cost per query (USD)")
    axes.set_ylabel("Accuracy (%), 95% Wilson CI")
    axes.set_title("Accuracy vs cost")
    # Room on the right for the last point's label; labels past the axes are kept by "tight".
    axes.margins(x=0.2, y=0.05)
    # Start just left of $0 so points drawn at x = 0 (free or unknown cost) are not cut in half.
    right = axes.get_xlim()[1]
    axes.set_xlim(-0.03 * right, right)
    axes.grid(visible=True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight")
