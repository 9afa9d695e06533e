"""What each key name spends, and its budget: holds before a call, charges after it.

Every request that may spend opens a ``Tab`` for its key name. Before its upstream calls, the
request *holds* its estimated cost against the key's budget: the hold is refused (402
``budget_exceeded``) when what was spent, plus what requests in flight hold, plus this estimate
would cross the limit. Each call then adds its real cost to the tab (the provider's
``usage.cost``; where it reported none, the tokens at configured or learnt prices, marked
estimated; a call cut off in flight, its prompt at those prices), and when the request ends the
tab is settled: its charge is added to the key's totals and its hold released, in one round trip.
So concurrent requests cannot all pass a check against the same remaining budget: the overspend
is bounded by how far the requests in flight cost more than their estimates.

Totals and holds live in a ``spend_store`` (Redis when configured: shared by every worker and
replica, surviving restarts; else this process). In Redis, a budgeted key's charge is written
as its request ends (it releases the hold); other keys' charges are written together once a
second (and at shutdown), which saves most requests a round trip. Redis that is down fails
open: requests are served, and charges that could not be written are kept for the next write.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import Callable

import msgspec
import structlog

from .config import BudgetPeriod
from .costs import CHARS_PER_TOKEN, Pricing
from .errors import BudgetExceededError, StoreUnavailableError
from .keys import KeyPolicy
from .redis_client import RedisBusy, busy_error
from .results import PanelResponse
from .spend_store import PERIODS, Charge, Hold, SpendStore, SpendTotals, period_id

log = structlog.get_logger("fusion_engine.spend")
_encode = msgspec.json.Encoder().encode
#: How often the charges of key names without a budget are written to a remote store.
FLUSH_S = 1.0
#: Call outcomes that mean the call was in flight when it was cut off (the provider read the
#: prompt, and may have billed it; one that timed out was generating until then).
_CUT_OFF = ("cancelled", "deadline", "timeout")

#: The tab of the request being served: the engine's call observer charges calls to it.
CURRENT_TAB: contextvars.ContextVar[Tab | None] = contextvars.ContextVar(
    "fusion_spend_tab", default=None
)


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


class Ledger:
    """The worker's spend accounting: opens tabs, checks holds, writes charges.

    Args:
        store: where totals live.
        pricing: prices for calls whose provider reported no cost.
        on_charge: told ``(key name, usd)`` for every settled charge (metrics).
        on_period_spend: told ``(key name, spent)`` when a budget period's spend is read.
        clock: wall-clock seconds (injectable for exact tests).
    """

    def __init__(
        self,
        store: SpendStore,
        pricing: Pricing,
        *,
        on_charge: Callable[[str, float], None] = lambda name, usd: None,
        on_period_spend: Callable[[str, float], None] = lambda name, usd: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pricing = pricing
        self._on_charge = on_charge
        self._on_period_spend = on_period_spend
        self._clock = clock
        #: Charges not written yet, by key name: those of names without a budget (written
        #: together every ``FLUSH_S``) and those the store could not take (written next time).
        self._pending: dict[str, Charge] = {}
        #: Settles started by calls that reported after their request had ended.
        self._late: set[asyncio.Task[None]] = set()
        self._last_logged = 0.0
        self._periods: dict[BudgetPeriod, str] = {}
        self._periods_second = -1

    def open(self, policy: KeyPolicy) -> Tab:
        """A tab for one request of ``policy``'s key name, current for this task."""
        tab = Tab(self, policy)
        CURRENT_TAB.set(tab)
        return tab

    def periods(self, now: float) -> dict[BudgetPeriod, str]:
        """The current period of every kind (worked out once a second: 13 µs each time)."""
        second = int(now)
        if second != self._periods_second:
            self._periods = {per: period_id(per, now) for per in PERIODS}
            self._periods_second = second
        return self._periods

    async def totals(self, policy: KeyPolicy) -> SpendTotals:
        """``policy``'s key name's figures now.

        Raises:
            RateLimitedError: Redis is too busy to tell (429).
            StoreUnavailableError: Redis cannot be reached (503).
        """
        now = self._clock()
        budget = policy.budget
        held_in = period_id(budget.per, now) if budget is not None else None
        try:
            totals = await self.store.totals(policy.name, self.periods(now), held_in, now)
        except RedisBusy as error:
            raise busy_error("read the key's spend") from error
        except Exception as error:
            raise StoreUnavailableError(
                "spend is kept in Redis, which cannot be reached right now; try again shortly"
            ) from error
        if budget is not None:
            self._on_period_spend(policy.name, totals.spent(budget.per))
        return totals

    async def report(self, policy: KeyPolicy) -> SpendReport:
        """``policy``'s key name's report (raises as ``totals`` does)."""
        now = self._clock()
        return spend_report(policy, await self.totals(policy), now)

    async def hold(self, policy: KeyPolicy, usd: float) -> Hold | None:
        """Hold ``usd`` against ``policy``'s budget (``None`` without a budget, or when the
        store cannot be reached: budgets fail open).

        Raises:
            BudgetExceededError: spent + held + ``usd`` would cross the limit (402).
            RateLimitedError: Redis is too busy to tell (429, back-pressure).
        """
        budget = policy.budget
        if budget is None:
            return None
        now = self._clock()
        period = period_id(budget.per, now)
        member = f"{uuid.uuid4().hex}:{usd!r}"
        try:
            held, spent, others = await self.store.hold(
                policy.name, period, member, usd, budget.limit, now
            )
        except RedisBusy as error:
            raise busy_error("check the key's budget") from error
        except Exception as error:  # fail open: serve, and say so in the log
            self._store_failed(error)
            return None
        self._on_period_spend(policy.name, spent)
        if not held:
            raise BudgetExceededError(_over_budget(policy, period, spent, others, usd))
        return Hold(period=period, member=member, usd=usd) if usd > 0 else None

    async def settle(self, policy: KeyPolicy, charge: Charge, hold: Hold | None) -> None:
        """Write ``charge`` (and any charge kept from an outage) and release ``hold``.

        A remote store's charges for names without a budget are only queued: ``flush`` writes
        them, one write per name every ``FLUSH_S`` instead of one per request (a Redis round
        trip is 0.2 ms of the gateway's CPU). Nothing is held for them, so nothing waits.
        """
        name = policy.name
        if hold is None and policy.budget is None and self.store.remote:
            self._pending.setdefault(name, Charge()).add(charge)
            self._on_charge(name, charge.usd)
            return
        pending = self._pending.pop(name, None)
        if pending is not None:
            pending.add(charge)
            charge = pending
        if charge.empty and hold is None:
            return
        try:
            totals = await self.store.charge(name, self.periods(self._clock()), charge, hold)
        except Exception as error:  # kept for the next settle of this name
            self._pending.setdefault(name, Charge()).add(charge)
            self._store_failed(error)
            return
        self._on_charge(name, charge.usd)
        if policy.budget is not None and policy.budget.per in totals:
            self._on_period_spend(name, totals[policy.budget.per])

    async def flush(self) -> None:
        """Write every queued charge (a failed write stays queued for the next flush)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        periods = self.periods(self._clock())
        for name, charge in pending.items():
            try:
                await self.store.charge(name, periods, charge, None)
            except Exception as error:
                self._pending.setdefault(name, Charge()).add(charge)
                self._store_failed(error)

    async def flush_forever(self, interval_s: float = FLUSH_S) -> None:
        """Forever (a remote store only): write the queued charges every ``interval_s``."""
        if not self.store.remote:
            return
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()

    def settle_later(self, policy: KeyPolicy, charge: Charge) -> None:
        """Settle a charge that arrived after its request ended (a call cut off late)."""
        task = asyncio.get_running_loop().create_task(self.settle(policy, charge, None))
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def _store_failed(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_logged > 30:
            self._last_logged = now
            log.warning("spend_store_unavailable", error=type(error).__name__)


def _over_budget(policy: KeyPolicy, period: str, spent: float, held: float, usd: float) -> str:
    budget = policy.budget
    assert budget is not None
    per = {"day": "daily", "month": "monthly", "total": "total"}[budget.per]
    left = max(budget.limit - spent - held, 0.0)
    message = (
        f"the key {policy.name!r} is over its {per} budget of ${budget.limit:.4f} "
        f"(period {period}): spent ${spent:.4f}"
    )
    if held:
        message += f", ${held:.4f} held by requests in flight"
    return message + f"; this request's estimate of ${usd:.4f} is over the ${left:.4f} left"


class Tab:
    """One request's charges and hold; settled once when the request ends."""

    __slots__ = ("_charge", "_hold", "_ledger", "_settled", "policy", "prompt")

    def __init__(self, ledger: Ledger, policy: KeyPolicy) -> None:
        self._ledger = ledger
        self.policy = policy
        self._charge = Charge()
        self._hold: Hold | None = None
        self._settled = False
        #: The request's conversation as sent upstream, to price calls cut off in flight
        #: (measured only if one is).
        self.prompt: object = None

    @property
    def prompt_tokens(self) -> float:
        """The prompt's size in tokens, estimated from its JSON."""
        return len(_encode(self.prompt)) / CHARS_PER_TOKEN if self.prompt is not None else 0.0

    @property
    def charged(self) -> Charge:
        """What this request owes so far."""
        return self._charge

    async def hold(self, usd: float | None) -> None:
        """Hold the request's estimate (``None``: unknown, held as 0) against the budget.

        Raises:
            BudgetExceededError: it does not fit in what is left (402).
        """
        if self.policy.budget is not None and self._hold is None:
            self._hold = await self._ledger.hold(self.policy, usd or 0.0)

    def add_call(self, response: PanelResponse) -> None:
        """Charge one member or judge call."""
        # A negative cost or token count is no report at all (``add_usage``).
        cost = response.cost_usd if response.cost_usd is None or response.cost_usd >= 0 else None
        tokens_in, tokens_out = max(response.tokens_in, 0), max(response.tokens_out, 0)
        if response.ok and cost is None and not (tokens_in or tokens_out):
            # A server that reports no usage at all (llama.cpp's streams): the answer was
            # written, so its tokens are estimated (at least the request's prompt), never 0.
            tokens_in = round(self.prompt_tokens)
            tokens_out = max(round(len(response.content or "") / CHARS_PER_TOKEN), 1)
        self.add_usage(
            response.model, tokens_in, tokens_out, cost,
            cut_off=response.error_kind in _CUT_OFF,
        )  # fmt: skip

    def add_usage(
        self,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cost_usd: float | None,
        *,
        cut_off: bool = False,
    ) -> None:
        """Charge one upstream call by what its provider reported."""
        charge = Charge()
        if cost_usd is not None and cost_usd < 0:
            # A provider's negative cost would credit the key (and lower its period's spend
            # under its budget): priced by its tokens instead, as an unreported cost is.
            cost_usd = None
        tokens_in, tokens_out = max(tokens_in, 0), max(tokens_out, 0)
        if cost_usd is not None:
            charge.usd = cost_usd
        elif tokens_in or tokens_out or cut_off:
            pricing = self._ledger.pricing
            if tokens_in or tokens_out:
                priced = pricing.call_cost(model, tokens_in, tokens_out)
            else:  # cut off in flight: the provider read the prompt
                priced = pricing.call_cost(model, self.prompt_tokens, 0)
            if priced is None:
                charge.unpriced_calls = 1
                log.warning("call_without_price", model=model, key=self.policy.name)
            else:
                charge.usd = charge.estimated_usd = priced
        else:
            return
        if self._settled:
            self._ledger.settle_later(self.policy, charge)
        else:
            self._charge.add(charge)

    async def settle(self) -> None:
        """Write what the request spent and release its hold (once)."""
        if self._settled:
            return
        self._settled = True
        if self._charge.empty and self._hold is None:
            return  # nothing spent, nothing held (a cache hit, a refusal)
        ledger = self._ledger
        write = ledger.settle(self.policy, self._charge, self._hold)
        if ledger.store.remote:
            # Shielded: a request cancelled at its end must still pay and let go of its hold.
            await asyncio.shield(write)
        else:
            await write


def charge_call(response: PanelResponse) -> None:
    """Charge a member or judge call to the current request's tab (if any)."""
    tab = CURRENT_TAB.get()
    if tab is not None:
        tab.add_call(response)
