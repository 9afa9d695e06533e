"""Prices and estimates: the per-request cost ceiling (estimate a fusion's cost before the
fan-out and enforce it), and ``Pricing``, the cost of a call its provider reported none for.

Prices are learnt from what providers report (``usage.cost`` with its token counts) for every
call, pooled across workers and replicas through Redis when it is configured (every 10 s); a
model never seen yet falls back to the panel's
``estimated_cost_per_query.max``. In Redis each model's totals are one hash whose lifetime is
renewed by every write, so models nobody calls any more (random ad-hoc slugs) expire; a sync
reads back only the models this worker prices (its panels' and those it learnt itself), never
a scan of every key. Estimation is pure; the ceiling either refuses (402) or, with
``cost_policy: trim``, drops the most expensive members until the fusion fits. ``Pricing``
adds the gateway YAML's configured ``prices:`` in front of the learnt ones, for key spend.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from .config import PriceSpec
from .errors import CostLimitError
from .plan import FusionPlan
from .results import PanelResponse

CostPolicy = Literal["refuse", "trim"]
PRICE_KEY = "fusion:prices:"
#: A model's shared totals live this long after the last call anyone learnt from.
PRICE_TTL_S = 7 * 86400
#: Models one worker keeps prices for; the least recently learnt go first.
MAX_MODELS = 1024
#: Rough characters per token, the same estimate the judge's input trimming uses.
CHARS_PER_TOKEN = 3.5


class ModelPrice(msgspec.Struct, kw_only=True):
    """What a model's calls have cost so far (running sums)."""

    calls: int = 0
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def usd_per_token(self) -> float:
        """Average cost of one token, input and output together."""
        return self.cost_usd / max(self.tokens_in + self.tokens_out, 1)

    @property
    def mean_tokens_out(self) -> float:
        """Average answer length."""
        return self.tokens_out / max(self.calls, 1)


class PriceBook:
    """Learnt prices per model: this worker's calls, plus every worker's when synced via Redis."""

    def __init__(self) -> None:
        self.prices: dict[str, ModelPrice] = {}
        #: Calls learnt since the last sync, to be added to the shared totals.
        self.unsynced: dict[str, ModelPrice] = {}

    def learn(self, response: PanelResponse) -> None:
        """Add one member or judge call whose provider reported a cost."""
        self.learn_usage(response.model, response.tokens_in, response.tokens_out, response.cost_usd)

    def learn_usage(
        self, model: str, tokens_in: int, tokens_out: int, cost_usd: float | None
    ) -> None:
        """Add one call (member, judge or passthrough) whose provider reported a cost."""
        if (
            cost_usd is None
            or min(cost_usd, tokens_in, tokens_out) < 0
            or not (tokens_in or tokens_out)
        ):
            return  # a negative cost would teach every key's estimates a negative price
        # Most recently learnt last, so the bound drops models nobody calls any more.
        self.prices[model] = self.prices.pop(model) if model in self.prices else ModelPrice()
        while len(self.prices) > MAX_MODELS:
            del self.prices[next(iter(self.prices))]
        for book in (self.prices, self.unsynced):
            price = book.setdefault(model, ModelPrice())
            price.calls += 1
            price.cost_usd += cost_usd
            price.tokens_in += tokens_in
            price.tokens_out += tokens_out

    async def sync(self, redis: Any, models: Iterable[str] = ()) -> None:
        """Add this worker's new calls to the totals in Redis and take back everyone's totals
        for ``models`` (the configured ones) and the models this worker learnt: one round trip.

        Each written total's lifetime is renewed (``PRICE_TTL_S``). Raises whatever the Redis
        client raises; the caller decides how to fail (open) and bounds the time it takes.
        """
        pending, self.unsynced = self.unsynced, {}
        wanted = sorted(set(models) | set(self.prices) | set(pending))
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for model, price in pending.items():
                    key = PRICE_KEY + model
                    pipe.hincrby(key, "calls", price.calls)
                    pipe.hincrbyfloat(key, "cost_usd", price.cost_usd)
                    pipe.hincrby(key, "tokens_in", price.tokens_in)
                    pipe.hincrby(key, "tokens_out", price.tokens_out)
                    pipe.expire(key, PRICE_TTL_S)
                for model in wanted:
                    pipe.hgetall(PRICE_KEY + model)
                replies = await pipe.execute()
        except BaseException:
            self._restore(pending)
            raise
        shared = {
            model: _price_from(fields)
            for model, fields in zip(wanted, replies[len(replies) - len(wanted) :], strict=True)
            if fields
        }
        self.prices = {**self.prices, **shared}

    def _restore(self, pending: dict[str, ModelPrice]) -> None:
        for model, price in pending.items():
            kept = self.unsynced.setdefault(model, ModelPrice())
            kept.calls += price.calls
            kept.cost_usd += price.cost_usd
            kept.tokens_in += price.tokens_in
            kept.tokens_out += price.tokens_out


def _price_from(fields: Mapping[Any, Any]) -> ModelPrice:
    def value(name: str) -> float:
        raw = fields.get(name.encode(), fields.get(name, 0))
        return float(raw.decode() if isinstance(raw, bytes) else raw)

    return ModelPrice(
        calls=int(value("calls")), cost_usd=value("cost_usd"),
        tokens_in=int(value("tokens_in")), tokens_out=int(value("tokens_out")),
    )  # fmt: skip


class Pricing:
    """What a call costs when its provider reported no cost: configured prices first, then
    the prices learnt from other calls (``costs.PriceBook``)."""

    def __init__(self, configured: Mapping[str, PriceSpec], book: PriceBook) -> None:
        self.configured = configured
        self._book = book

    @property
    def learnt(self) -> Mapping[str, ModelPrice]:
        """The prices learnt so far (the book replaces its mapping at every sync)."""
        return self._book.prices

    def call_cost(self, model: str, tokens_in: float, tokens_out: float) -> float | None:
        """The price of ``tokens_in`` + ``tokens_out`` on ``model``, or ``None`` if unpriced."""
        price = self.configured.get(model)
        if price is not None:
            return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6
        learnt = self.learnt.get(model)
        if learnt is not None:
            return learnt.usd_per_token * (tokens_in + tokens_out)
        return None

    def answer_cost(self, model: str, prompt_tokens: float) -> float | None:
        """The expected cost of one call: the prompt plus the model's mean answer (learnt)."""
        learnt = self.learnt.get(model)
        answer = learnt.mean_tokens_out if learnt is not None else 0.0
        return self.call_cost(model, prompt_tokens, answer)


class CostEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """A fusion's expected cost; ``None`` parts are models with no price yet."""

    members: list[float | None]
    judge: float | None
    fallback: float | None

    @property
    def total(self) -> float | None:
        """Members and judge, or the panel's own estimate when any price is missing."""
        if self.judge is None or any(cost is None for cost in self.members):
            return self.fallback
        return sum(cost for cost in self.members if cost is not None) + self.judge


def estimate(plan: FusionPlan, prices: Mapping[str, ModelPrice]) -> CostEstimate:
    """The cost of ``plan`` at the learnt prices (pure)."""
    prompt_tokens = len(json.dumps(plan.conversation)) / CHARS_PER_TOKEN
    members: list[float | None] = []
    answers_tokens = 0.0
    for member in plan.panel.models:
        price = prices.get(member.slug)
        if price is None:
            members.append(None)
            continue
        answer = price.mean_tokens_out
        answers_tokens += answer
        members.append(price.usd_per_token * (prompt_tokens + answer))
    judge_price = prices.get(plan.judge_chain[0])
    judge = None
    if judge_price is not None:
        judge_in = prompt_tokens + len(plan.template) / CHARS_PER_TOKEN + answers_tokens
        judge = judge_price.usd_per_token * (judge_in + judge_price.mean_tokens_out)
    panel_estimate = plan.panel.estimated_cost_per_query
    return CostEstimate(
        members=members, judge=judge, fallback=panel_estimate.max if panel_estimate else None
    )


def enforce(
    plan: FusionPlan,
    ceiling: float | None,
    prices: Mapping[str, ModelPrice],
    *,
    policy: CostPolicy = "refuse",
) -> FusionPlan:
    """``plan`` if it fits under ``ceiling``; trimmed when the policy allows; else 402.

    A plan whose cost cannot be estimated at all (no prices, no panel estimate) is let
    through: refusing every new model would make the ceiling unusable.

    Raises:
        CostLimitError: the estimate is over the ceiling and cannot be trimmed to fit.
    """
    if ceiling is None:
        return plan
    cost = estimate(plan, prices)
    total = cost.total
    if total is None or total <= ceiling:
        return plan
    if policy == "trim" and cost.judge is not None and None not in cost.members:
        trimmed = _trim(plan, [c for c in cost.members if c is not None], cost.judge, ceiling)
        if trimmed is not None:
            return trimmed
    raise CostLimitError(
        f"the estimated cost of this fusion (${total:.4f}) is over the ceiling of ${ceiling:.4f}",
        param="model",
    )


def _trim(plan: FusionPlan, costs: list[float], judge: float, ceiling: float) -> FusionPlan | None:
    """Drop the most expensive members until the rest and the judge fit (at least one stays)."""
    keep = sorted(range(len(costs)), key=lambda index: costs[index])
    while keep and sum(costs[i] for i in keep) + judge > ceiling:
        keep.pop()
    if not keep:
        return None
    kept = sorted(keep)
    panel = plan.panel
    dropped = [m.slug for i, m in enumerate(panel.models) if i not in kept]
    trimmed_panel = msgspec.structs.replace(
        panel,
        models=[panel.models[i] for i in kept],
        min_responses=min(panel.min_responses, len(kept)),
    )
    return msgspec.structs.replace(
        plan,
        panel=trimmed_panel,
        member_providers=[plan.member_providers[i] for i in kept],
        dropped_members=[*plan.dropped_members, *dropped],
    )
