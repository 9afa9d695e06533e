"""``GET /v1/spend``: the caller's own spend, budget and what is left of it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from ..config import BudgetPeriod
from ..keys import KeyPolicy
from ..spend import Ledger, SpendTotals, period_id
from .admission import admit
from .errors import json_response
from .gateway import gateway_of
from .openapi import documented, error_replies, json_reply, schema_of


class BudgetState(msgspec.Struct, frozen=True, kw_only=True):
    """A key's budget in its current period."""

    limit_usd: float
    per: BudgetPeriod
    #: The period the figures are for: ``2026-12-07``, ``2026-12`` or ``total``.
    period: str
    spent_usd: float
    #: Estimates held by the key's requests in flight (charged when they end).
    held_usd: float
    remaining_usd: float


class SpendReport(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/spend`` (and ``fusion spend``): one key name's spend."""

    key: str
    #: Spend of the current UTC day, calendar month, and all time, in USD.
    day_usd: float
    month_usd: float
    total_usd: float
    #: Of the all-time spend, what the gateway priced itself (the provider reported no cost).
    estimated_usd: float
    #: Calls that produced tokens no price covers (charged nothing; configure ``prices:``).
    unpriced_calls: int
    budget: BudgetState | None
    object: str = "spend"


def spend_report(policy: KeyPolicy, totals: SpendTotals, now: float) -> SpendReport:
    """The report of ``policy``'s key name from its ``totals`` (pure)."""
    budget = None
    if policy.budget is not None:
        spent = totals.spent(policy.budget.per)
        budget = BudgetState(
            limit_usd=policy.budget.limit,
            per=policy.budget.per,
            period=period_id(policy.budget.per, now),
            spent_usd=spent,
            held_usd=totals.held_usd,
            remaining_usd=max(policy.budget.limit - spent - totals.held_usd, 0.0),
        )
    return SpendReport(
        key=policy.name, day_usd=totals.day, month_usd=totals.month, total_usd=totals.total,
        estimated_usd=totals.estimated_usd, unpriced_calls=totals.unpriced_calls, budget=budget,
    )  # fmt: skip


async def report_of(ledger: Ledger, policy: KeyPolicy, now: float) -> SpendReport:
    """``policy``'s key name's report, read from ``ledger``'s store."""
    return spend_report(policy, await ledger.totals(policy), now)


@get(
    "/v1/spend",
    summary="The calling key's spend and budget",
    operation_class=documented(
        {
            "200": json_reply("The key's spend and budget.", schema_of(SpendReport)),
            **error_replies(401, 429, 503),
        }
    ),
)
async def own_spend(request: Request[Any, Any, Any]) -> Response[bytes]:
    """What the calling key name has spent (today, this month, in all), and its budget."""
    admitted = await admit(request, read_body=False)
    ledger = gateway_of(request).ledger
    return json_response(await report_of(ledger, admitted.policy, ledger.now()))
