"""One row of eval results: what one system answered on one item, and what it cost."""

from __future__ import annotations

import msgspec


class ItemRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of running one system on one item.

    ``system`` is ``"fusion:<panel>"``, ``"single:<model>"`` or ``"judge_alone:<model>"``. A
    record with ``error`` set is a failed call and counts as incorrect; ``cost_usd`` is ``None``
    when the provider reported no cost (unknown, which is not the same as free).
    """

    system: str
    item_id: str
    category: str = ""
    answer: str | None = None
    correct: bool = False
    extracted: str | None = None
    grade_detail: str | None = None
    cost_usd: float | None = None
    latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
