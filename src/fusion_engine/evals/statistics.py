"""Pure statistics over eval records: per-system summaries and paired system comparisons.

Accuracy intervals are Wilson score intervals (sane at 0% and 100%, unlike the normal
approximation). Two systems are compared on the items both answered: a paired percentile
bootstrap for the accuracy difference and an exact McNemar test on the discordant pairs, and a
difference counts as significant only when both agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import stats

from .records import ItemRecord

SINGLE_PREFIX = "single:"
SIGNIFICANCE_LEVEL = 0.05


class SystemSummary(msgspec.Struct, frozen=True, kw_only=True):
    """How one system did over all its items: accuracy, cost, latency and tokens."""

    system: str
    items: int
    correct: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    mean_cost_usd: float | None
    total_cost_usd: float | None
    p50_latency_ms: float
    p95_latency_ms: float
    mean_tokens_in: float
    mean_tokens_out: float
    errors: int
    accuracy_per_dollar: float | None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """``system`` against ``baseline`` on the items both answered; deltas are system − baseline."""

    system: str
    baseline: str
    items: int
    delta_accuracy: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    mcnemar_p: float
    cost_multiple: float | None
    significant: bool


def is_correct(record: ItemRecord) -> bool:
    """Whether a record counts as correct; a failed call never does."""
    return record.correct and record.error is None


def wilson_interval(correct: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = correct / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # In exact arithmetic the bounds are 0 at 0/n and 1 at n/n, but the float sums land a hair
    # inside (0/3 gave 5.6e-17, 10/10 gave 0.9999999999999999), which left the point outside
    # its own interval; set the closed ends exactly and keep the point inside the interval.
    low = 0.0 if correct == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if correct == n else max(p, min(1.0, centre + half))
    return (low, high)


def summarize(records: Sequence[ItemRecord]) -> list[SystemSummary]:
    """One summary per system, in the order systems first appear in ``records``."""
    by_system: dict[str, list[ItemRecord]] = {}
    for record in records:
        by_system.setdefault(record.system, []).append(record)
    return [_summarize_system(system, rows) for system, rows in by_system.items()]


def _summarize_system(system: str, rows: Sequence[ItemRecord]) -> SystemSummary:
    n = len(rows)
    correct = sum(is_correct(row) for row in rows)
    accuracy = correct / n
    total_cost = _total_cost(rows)
    mean_cost = None if total_cost is None else total_cost / n
    latencies = np.array([row.latency_ms for row in rows], dtype=np.float64)
    p50, p95 = np.percentile(latencies, [50, 95])
    return SystemSummary(
        system=system,
        items=n,
        correct=correct,
        accuracy=accuracy,
        accuracy_ci=wilson_interval(correct, n),
        mean_cost_usd=mean_cost,
        total_cost_usd=total_cost,
        p50_latency_ms=float(p50),
        p95_latency_ms=float(p95),
        mean_tokens_in=sum(row.tokens_in for row in rows) / n,
        mean_tokens_out=sum(row.tokens_out for row in rows) / n,
        errors=sum(row.error is not None for row in rows),
        accuracy_per_dollar=accuracy / mean_cost if mean_cost else None,
    )


def _total_cost(rows: Iterable[ItemRecord]) -> float | None:
    # One unknown cost makes the total unknown: counting it as $0 would flatter the system.
    total = 0.0
    for row in rows:
        if row.cost_usd is None:
            return None
        total += row.cost_usd
    return total


def _as_pair(
    a: Sequence[bool], b: Sequence[bool]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} != {len(b)}")
    return np.asarray(a, dtype=np.bool_), np.asarray(b, dtype=np.bool_)


def win_tie_loss(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int]:
    """Count items where only ``a`` is right (win), both agree (tie), only ``b`` is right (loss).

    Raises:
        ValueError: the vectors differ in length.
    """
    left, right = _as_pair(a, b)
    wins = int(np.count_nonzero(left & ~right))
    losses = int(np.count_nonzero(~left & right))
    return wins, len(left) - wins - losses, losses


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs); 1.0 if none.

    Raises:
        ValueError: the vectors differ in length.
    """
    wins, _, losses = win_tie_loss(a, b)
    discordant = wins + losses
    if discordant == 0:
        return 1.0
    result = stats.binomtest(wins, discordant, 0.5, alternative="two-sided")
    return float(result.pvalue)


def paired_bootstrap_ci(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    iterations: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy difference a − b and its paired percentile bootstrap interval.

    Returns:
        ``(mean difference, ci_low, ci_high)``.

    Raises:
        ValueError: the vectors are empty or differ in length, or an argument is out of range.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    wins, ties, losses = win_tie_loss(a, b)
    n = wins + ties + losses
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    # Each item's difference is +1, 0 or -1, so a resample of n items is fully described by how
    # many of each it drew: a multinomial draw. Same distribution as resampling item indices,
    # in O(iterations) memory instead of O(iterations * n).
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [wins / n, ties / n, losses / n], size=iterations)
    differences = (draws[:, 0] - draws[:, 2]) / n
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return (wins - losses) / n, float(low), float(high)


def compare(
    records: Sequence[ItemRecord],
    system: str,
    baseline: str,
    *,
    iterations: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Pair ``system`` with ``baseline`` on the items both have and test the difference.

    Raises:
        ValueError: the two systems share no items, or one has two records for an item.
    """
    ours = _records_by_item(records, system)
    theirs = _records_by_item(records, baseline)
    shared = [item_id for item_id in ours if item_id in theirs]
    if not shared:
        raise ValueError(f"{system!r} and {baseline!r} share no items")
    a = [is_correct(ours[item_id]) for item_id in shared]
    b = [is_correct(theirs[item_id]) for item_id in shared]
    delta, low, high = paired_bootstrap_ci(a, b, iterations=iterations, seed=seed)
    wins, ties, losses = win_tie_loss(a, b)
    p = mcnemar_exact(a, b)
    excludes_zero = low > 0 or high < 0
    return Comparison(
        system=system,
        baseline=baseline,
        items=len(shared),
        delta_accuracy=delta,
        ci_low=low,
        ci_high=high,
        wins=wins,
        ties=ties,
        losses=losses,
        mcnemar_p=p,
        cost_multiple=_cost_multiple(
            [ours[item_id] for item_id in shared], [theirs[item_id] for item_id in shared]
        ),
        significant=excludes_zero and p < SIGNIFICANCE_LEVEL,
    )


def _records_by_item(records: Iterable[ItemRecord], system: str) -> dict[str, ItemRecord]:
    by_item: dict[str, ItemRecord] = {}
    for record in records:
        if record.system != system:
            continue
        if record.item_id in by_item:
            raise ValueError(f"{system!r} has more than one record for item {record.item_id!r}")
        by_item[record.item_id] = record
    return by_item


def _cost_multiple(ours: Sequence[ItemRecord], theirs: Sequence[ItemRecord]) -> float | None:
    # Over the shared items only, so both means price the same questions.
    our_total = _total_cost(ours)
    their_total = _total_cost(theirs)
    if our_total is None or their_total is None or their_total == 0:
        return None
    return our_total / their_total


def best_single(summaries: Iterable[SystemSummary]) -> str | None:
    """The ``single:`` system with the highest accuracy; ties go to lower mean cost, then name.

    An unknown cost loses a tie to any known cost. Returns ``None`` when there is no single.
    """
    singles = [s for s in summaries if s.system.startswith(SINGLE_PREFIX)]
    if not singles:
        return None
    best = min(
        singles,
        key=lambda s: (
            -s.accuracy,
            math.inf if s.mean_cost_usd is None else s.mean_cost_usd,
            s.system,
        ),
    )
    return best.system
