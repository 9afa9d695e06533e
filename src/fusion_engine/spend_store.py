"""Where spend lives: each key name's totals per period and the holds of requests in flight,
in this process or in Redis (``spend.py`` decides what to hold and charge).

In Redis: ``fusion:spend:<name>:<period>`` is a float (``INCRBYFLOAT``) per UTC day, calendar
month and all time, kept a few days, two months and for good; ``fusion:spend:<name>:estimated``
and ``:unpriced`` are all-time; ``fusion:spend:<name>:<period>:holds`` is a sorted set of
``<token>:<usd>`` members scored by their expiry, so a hold outlives a worker that died holding
it by at most ``HOLD_S``. Holding is one Lua script: drop expired holds, then add ours only if
spent + held + ours stays within the limit, so concurrent requests can never all pass one check.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from .config import BudgetPeriod
from .redis_client import SharedRedis

SPEND_KEY = "fusion:spend:"
PERIODS: tuple[BudgetPeriod, ...] = ("day", "month", "total")
#: How long a period's total is kept after its last charge (a day's for a few days, a month's
#: for two months); all-time totals are kept for good.
PERIOD_TTL_S: Mapping[BudgetPeriod, int | None] = {
    "day": 3 * 86400,
    "month": 62 * 86400,
    "total": None,
}
#: A hold outlives a worker that died holding it by at most this long.
HOLD_S = 900


def period_id(per: BudgetPeriod, now: float) -> str:
    """The period ``now`` falls in: ``2026-12-07`` (day), ``2026-12`` (month) or ``total``."""
    if per == "total":
        return "total"
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d" if per == "day" else "%Y-%m")


class Charge(msgspec.Struct, kw_only=True):
    """USD owed by one request (or several): ``estimated_usd`` is the part priced by the
    gateway; ``unpriced_calls`` produced tokens that no price covers (charged nothing, and
    reported so, never silently)."""

    usd: float = 0.0
    estimated_usd: float = 0.0
    unpriced_calls: int = 0

    def add(self, other: Charge) -> None:
        """Add ``other`` to this charge."""
        self.usd += other.usd
        self.estimated_usd += other.estimated_usd
        self.unpriced_calls += other.unpriced_calls

    @property
    def empty(self) -> bool:
        """Whether there is nothing to write."""
        return not (self.usd or self.unpriced_calls)


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """An amount held against a budget period until the request settles."""

    period: str
    member: str
    usd: float


class SpendTotals(msgspec.Struct, kw_only=True):
    """A key name's figures: spend per period, the part estimated, what is held now."""

    day: float = 0.0
    month: float = 0.0
    total: float = 0.0
    estimated_usd: float = 0.0
    unpriced_calls: int = 0
    held_usd: float = 0.0

    def spent(self, per: BudgetPeriod) -> float:
        """The spend of the current ``per`` period."""
        value: float = getattr(self, per)
        return value


class SpendStore(Protocol):
    """Where totals and holds live."""

    #: Whether writes go over the network (a write must then be shielded from cancellation;
    #: an in-process one completes without yielding).
    remote: bool

    async def hold(
        self, name: str, period: str, member: str, usd: float, limit: float, now: float
    ) -> tuple[bool, float, float]:
        """Hold ``usd`` if it fits under ``limit``: (held, spent, already held)."""
        ...

    async def charge(
        self, name: str, periods: Mapping[BudgetPeriod, str], charge: Charge, hold: Hold | None
    ) -> dict[BudgetPeriod, float]:
        """Add ``charge`` to every period's total and release ``hold``; the new totals (none
        when ``charge`` has no USD)."""
        ...

    async def totals(
        self, name: str, periods: Mapping[BudgetPeriod, str], held_in: str | None, now: float
    ) -> SpendTotals:
        """The key name's figures (``held_in``: the period whose holds to count)."""
        ...


class MemorySpendStore:
    """Totals in this process (one worker, lost at restart)."""

    remote = False

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._holds: dict[str, dict[str, tuple[float, float]]] = {}

    def _held(self, key: str, now: float) -> float:
        holds = self._holds.setdefault(key, {})
        for member in [m for m, (_, expiry) in holds.items() if expiry <= now]:
            del holds[member]
        return sum(usd for usd, _ in holds.values())

    async def hold(
        self, name: str, period: str, member: str, usd: float, limit: float, now: float
    ) -> tuple[bool, float, float]:
        key = f"{name}:{period}"
        spent, held = self._totals.get(key, 0.0), self._held(key, now)
        if spent + held >= limit or spent + held + usd > limit:
            return False, spent, held
        if usd > 0:
            self._holds[key][member] = (usd, now + HOLD_S)
        return True, spent, held

    async def charge(
        self, name: str, periods: Mapping[BudgetPeriod, str], charge: Charge, hold: Hold | None
    ) -> dict[BudgetPeriod, float]:
        totals: dict[BudgetPeriod, float] = {}
        for per, period in periods.items():
            key = f"{name}:{period}"
            totals[per] = self._totals[key] = self._totals.get(key, 0.0) + charge.usd
        for field, value in (
            ("estimated", charge.estimated_usd),
            ("unpriced", charge.unpriced_calls),
        ):
            self._totals[f"{name}:{field}"] = self._totals.get(f"{name}:{field}", 0.0) + value
        if hold is not None:
            self._holds.get(f"{name}:{hold.period}", {}).pop(hold.member, None)
        return totals

    async def totals(
        self, name: str, periods: Mapping[BudgetPeriod, str], held_in: str | None, now: float
    ) -> SpendTotals:
        figures = {
            per: self._totals.get(f"{name}:{period}", 0.0) for per, period in periods.items()
        }
        return SpendTotals(
            **figures,
            estimated_usd=self._totals.get(f"{name}:estimated", 0.0),
            unpriced_calls=int(self._totals.get(f"{name}:unpriced", 0.0)),
            held_usd=self._held(f"{name}:{held_in}", now) if held_in else 0.0,
        )


# Hold an amount atomically: drop expired holds, sum the rest (each member is
# "<token>:<usd>"), and add ours only if spent + held + ours stays within the limit. Numbers go
# back as strings: Redis turns a Lua number into an integer.
_HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local held = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  held = held + tonumber(string.match(member, ':([^:]*)$'))
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[2])
local usd = tonumber(ARGV[3])
if spent + held >= limit or spent + held + usd > limit then
  return {0, tostring(spent), tostring(held)}
end
if usd > 0 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return {1, tostring(spent), tostring(held)}
"""


# Charge one request in one command (cheaper for the gateway's CPU than a pipeline of seven):
# add the USD to each period's total (KEYS[1..3]: day, month, all time; ARGV[4..5] the day's and
# the month's lifetimes), the estimated part and the unpriced calls (KEYS[4], KEYS[5]), and
# release the hold (KEYS[6], member ARGV[6], if any). The new totals go back as strings.
_CHARGE = """
local totals = {}
local usd = tonumber(ARGV[1])
if usd ~= 0 then
  for i = 1, 3 do
    totals[i] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if tonumber(ARGV[2]) ~= 0 then redis.call('INCRBYFLOAT', KEYS[4], ARGV[2]) end
if tonumber(ARGV[3]) ~= 0 then redis.call('INCRBY', KEYS[5], ARGV[3]) end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[6], ARGV[6]) end
return totals
"""


class RedisSpendStore:
    """Totals and holds in Redis, shared by every worker and replica."""

    remote = True

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._hold = redis.client.register_script(_HOLD)
        self._charge = redis.client.register_script(_CHARGE)

    async def hold(
        self, name: str, period: str, member: str, usd: float, limit: float, now: float
    ) -> tuple[bool, float, float]:
        keys = [f"{SPEND_KEY}{name}:{period}", f"{SPEND_KEY}{name}:{period}:holds"]
        args: list[str | float] = [now, repr(limit), repr(usd), now + HOLD_S, member, HOLD_S]
        reply = await self._redis.run(lambda client: self._hold(keys=keys, args=args))
        taken, spent, held = reply
        return bool(int(taken)), float(spent), float(held)

    async def charge(
        self, name: str, periods: Mapping[BudgetPeriod, str], charge: Charge, hold: Hold | None
    ) -> dict[BudgetPeriod, float]:
        prefix = f"{SPEND_KEY}{name}:"
        keys = [
            prefix + periods["day"], prefix + periods["month"], prefix + periods["total"],
            prefix + "estimated", prefix + "unpriced",
            f"{prefix}{hold.period}:holds" if hold is not None else prefix + "holds",
        ]  # fmt: skip
        args: list[str | int] = [
            repr(charge.usd), repr(charge.estimated_usd), charge.unpriced_calls,
            PERIOD_TTL_S["day"] or 0, PERIOD_TTL_S["month"] or 0,
            hold.member if hold is not None else "",
        ]  # fmt: skip
        # A hold must be released even right after an outage: it would block the budget.
        totals = await self._redis.run(
            lambda client: self._charge(keys=keys, args=args), skip_if_down=hold is None
        )
        return {per: float(total) for per, total in zip(PERIODS, totals, strict=False)}

    async def totals(
        self, name: str, periods: Mapping[BudgetPeriod, str], held_in: str | None, now: float
    ) -> SpendTotals:
        async def read(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for period in periods.values():
                    pipe.get(f"{SPEND_KEY}{name}:{period}")
                pipe.get(f"{SPEND_KEY}{name}:estimated")
                pipe.get(f"{SPEND_KEY}{name}:unpriced")
                if held_in:
                    holds = f"{SPEND_KEY}{name}:{held_in}:holds"
                    pipe.zrangebyscore(holds, now, "+inf")
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self._redis.run(read)
        figures = {per: float(value or 0) for per, value in zip(periods, replies, strict=False)}
        rest = replies[len(periods) :]
        held = 0.0
        if held_in:
            held = sum(float(member.rsplit(b":", 1)[1]) for member in rest[2])
        return SpendTotals(
            **figures,
            estimated_usd=float(rest[0] or 0),
            unpriced_calls=int(rest[1] or 0),
            held_usd=held,
        )
