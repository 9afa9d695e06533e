"""The ``keys:`` section, the key ring, and the spend stores (memory and the shared Redis)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from fusion_engine.config import BudgetSpec, GatewayConfig, RateLimitSpec, load_config
from fusion_engine.costs import PriceBook, Pricing
from fusion_engine.errors import (
    BudgetExceededError,
    ConfigFileError,
    NotFoundError,
    PermissionDeniedError,
)
from fusion_engine.keys import KeyPolicy, key_ring
from fusion_engine.redis_client import SharedRedis
from fusion_engine.results import PanelResponse
from fusion_engine.settings import Settings
from fusion_engine.spend import CURRENT_TAB, Ledger, charge_call
from fusion_engine.spend_store import (
    Charge,
    MemorySpendStore,
    RedisSpendStore,
    SpendStore,
    period_id,
)

from .helpers import REDIS_URL, require_redis


def load(tmp_path: Path, text: str, **environ: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    settings = Settings.from_environ({"FUSION_CONFIG": str(path), **environ})
    return load_config(settings).gateway


def config_error(tmp_path: Path, text: str, **environ: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        load_config(Settings.from_environ({"FUSION_CONFIG": str(path), **environ}))
    return str(raised.value)


@pytest.mark.parametrize(
    ("text", "environ", "names"),
    [
        ("keys: [{name: team-a, key_env: TEAM_A}]", {}, "keys[0] (team-a).key_env"),
        ("keys: [{name: team-a}]", {}, "exactly one of key_env and key_sha256"),
        (
            "keys: [{name: team-a, key_env: K, key_sha256: abc}]",
            {"K": "v"},
            "exactly one of key_env and key_sha256",
        ),
        ("keys: [{name: team-a, key_sha256: abc}]", {}, "keys[0] (team-a).key_sha256"),
        ("keys: [{name: Team A, key_env: K}]", {"K": "v"}, "keys[0].name"),
        (
            "keys: [{name: t, key_env: K, budget_usd: {limit: 0}}]",
            {"K": "v"},
            "keys[0] (t).budget_usd.limit",
        ),
        (
            "keys: [{name: t, key_env: K, budget_usd: {limit: 1, per: week}}]",
            {"K": "v"},
            "keys[0].budget_usd.per",
        ),
        (
            "keys: [{name: t, key_env: K, rate_limit: {requests_per_minute: 0}}]",
            {"K": "v"},
            "keys[0] (t).rate_limit.requests_per_minute",
        ),
        (
            "keys: [{name: t, key_env: K}, {name: t, key_env: L, passthrough: false}]",
            {"K": "v", "L": "w"},
            "keys[1] (t): shares its name with keys[0]",
        ),
        ("prices: {m: {input_per_mtok: -1, output_per_mtok: 1}}", {}, "prices.m"),
    ],
)
def test_a_broken_keys_section_names_the_file_and_field(
    tmp_path: Path, text: str, environ: dict[str, str], names: str
) -> None:
    message = config_error(tmp_path, text, **environ)
    assert str(tmp_path / "gateway.yaml") in message
    assert names in message
    assert all(value not in message for value in environ.values() if len(value) > 1)


def test_rotation_two_keys_one_name_one_policy(tmp_path: Path) -> None:
    """Two entries of one name (old and new key) with one policy are one caller; a name from
    FUSION_SERVER_API_KEYS that the YAML lists takes the YAML's policy."""
    digest = hashlib.sha256(b"new-key").hexdigest()
    text = f"""
rate_limit: {{requests_per_minute: 100, concurrent_fusions: 3}}
keys:
  - {{name: team, key_env: OLD, budget_usd: {{limit: 5, per: day}}, rate_limit: {{concurrent_fusions: 1}}}}
  - {{name: team, key_sha256: {digest}, budget_usd: {{limit: 5, per: day}}, rate_limit: {{concurrent_fusions: 1}}}}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    settings = Settings.from_environ(
        {"FUSION_CONFIG": str(path), "OLD": "old-key", "FUSION_SERVER_API_KEYS": "team:env-key,x:y"}
    )
    config = load_config(settings)
    ring = key_ring(settings.server_api_keys, config.keys, config.gateway.rate_limit)
    assert [ring.name_of(key) for key in ("old-key", "new-key", "env-key", "y", "nope")] == [
        "team", "team", "team", "x", None,
    ]  # fmt: skip
    team = ring.policy("team")
    assert team.budget is not None and (team.budget.limit, team.budget.per) == (5, "day")
    assert team.rate_limit == RateLimitSpec(requests_per_minute=100, concurrent_fusions=1)
    assert ring.policy("x").rate_limit == config.gateway.rate_limit
    assert ring.names == ["team", "x"]
    with pytest.raises(NotFoundError):
        ring.configured("nobody")


def test_spend_can_read_names_without_their_keys(tmp_path: Path) -> None:
    """``fusion spend`` loads the config without the keys' variables (it needs the names)."""
    path = tmp_path / "gateway.yaml"
    path.write_text("keys: [{name: team, key_env: UNSET_FOR_THIS_TEST}]")
    settings = Settings.from_environ({"FUSION_CONFIG": str(path)})
    config = load_config(settings, need_keys=False)
    ring = key_ring((), config.keys, config.gateway.rate_limit)
    assert ring.names == ["team"] and ring.name_of("") is None


def test_allow_list_and_passthrough_switch() -> None:
    policy = msgspec.structs.replace(
        key_ring((), (), RateLimitSpec()).policy("t"),
        panels=frozenset({"quick", "ad-hoc"}),
        passthrough=False,
    )
    policy.check_panel("quick")
    policy.check_panel(None)  # ad-hoc is on the list
    with pytest.raises(PermissionDeniedError, match="allowed: quick"):
        policy.check_panel("trio")
    with pytest.raises(PermissionDeniedError, match="may only use fusion"):
        policy.check_passthrough("vendor/model")


def test_periods_are_utc_days_months_and_all_time() -> None:
    moment = 1796601600.0  # 2026-12-07T00:00:00Z
    assert period_id("day", moment) == "2026-12-07"
    assert period_id("day", moment - 1) == "2026-12-06"
    assert period_id("month", moment) == "2026-12"
    assert period_id("total", moment) == "total"


# --- the stores: memory and Redis behave alike ---------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SpendStore]:
    if request.param == "memory":
        yield MemorySpendStore()
        return
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    yield RedisSpendStore(redis)
    await redis.aclose()


def budgeted(limit: float) -> tuple[KeyPolicy, str]:
    """A key name of its own (the shared Redis keeps totals) with a monthly budget."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    return KeyPolicy(name=name, budget=BudgetSpec(limit=limit, per="month")), name


async def test_holds_count_against_the_budget_until_settled(store: SpendStore) -> None:
    """Spent + held + the new estimate must fit: holds block what in-flight requests may
    spend, settling turns a hold into its real charge."""
    seen: list[tuple[str, float]] = []
    ledger = Ledger(
        store, Pricing({}, PriceBook()), on_period_spend=lambda key, usd: seen.append((key, usd))
    )
    policy, name = budgeted(1.0)
    first = await ledger.hold(policy, 0.4)
    second = await ledger.hold(policy, 0.4)
    with pytest.raises(BudgetExceededError, match=r"\$0.8000 held") as refused:
        await ledger.hold(policy, 0.4)
    assert "$0.2000 left" in refused.value.message
    await ledger.settle(policy, Charge(usd=0.1), first)
    await ledger.settle(policy, Charge(usd=0.1), second)
    totals = await ledger.totals(policy)
    assert (totals.month, totals.total, totals.held_usd) == (
        pytest.approx(0.2), pytest.approx(0.2), 0.0,
    )  # fmt: skip
    assert await ledger.hold(policy, 0.8) is not None
    assert seen[-1] == (name, pytest.approx(0.2))  # the period's spend, for the gauge
    # Over the limit by spend alone: even an unknown (0) estimate is refused.
    await ledger.settle(policy, Charge(usd=0.85), None)
    with pytest.raises(BudgetExceededError):
        await ledger.hold(policy, 0.0)


async def test_charges_redis_did_not_take_are_kept_for_the_next_settle() -> None:
    """An outage loses no charge: it is added with the name's next settle."""

    class Flaky(MemorySpendStore):
        down = True

        async def charge(self, *args: object, **kwargs: object) -> dict[str, float]:
            if self.down:
                raise ConnectionError("down")
            return await super().charge(*args, **kwargs)  # type: ignore[arg-type, return-value]

    store = Flaky()
    ledger = Ledger(store, Pricing({}, PriceBook()))
    policy, _ = budgeted(10.0)
    await ledger.settle(policy, Charge(usd=1.0), None)
    store.down = False
    await ledger.settle(policy, Charge(usd=0.5, estimated_usd=0.5), None)
    totals = await ledger.totals(policy)
    assert (totals.total, totals.estimated_usd) == (1.5, 0.5)


async def test_a_tab_prices_what_the_provider_did_not() -> None:
    """Reported costs as they are; tokens without a cost at configured prices (estimated); a
    call cut off in flight at its prompt; no price at all counted as unpriced."""
    from fusion_engine.config import PriceSpec

    book = PriceBook()
    book.learn_usage("learnt/model", 100, 100, 0.002)  # 1e-5 a token
    pricing = Pricing({"local/model": PriceSpec(input_per_mtok=1000, output_per_mtok=2000)}, book)
    ledger = Ledger(MemorySpendStore(), pricing)
    policy, _ = budgeted(1.0)
    tab = ledger.open(policy)
    assert CURRENT_TAB.get() is tab
    tab.prompt = [{"role": "user", "content": "x" * 320}]  # 350 characters of JSON: 100 tokens
    charge_call(PanelResponse(index=0, model="cloud/model", tokens_in=5, cost_usd=0.01))
    charge_call(PanelResponse(index=1, model="local/model", tokens_in=10, tokens_out=20))
    charge_call(PanelResponse(index=2, model="learnt/model", error_kind="cancelled"))
    charge_call(PanelResponse(index=3, model="unknown/model", tokens_in=1, tokens_out=1))
    charge_call(PanelResponse(index=4, model="unknown/model", error="refused"))  # cost nothing
    # An answer from a server that reported no usage at all: 100 prompt tokens, 35 characters
    # of answer (10 tokens), at the configured price.
    charge_call(PanelResponse(index=5, model="local/model", content="y" * 35))
    charged = tab.charged
    # 0.01 reported; 10 * 1000 / 1e6 + 20 * 2000 / 1e6 configured; 100 tokens * 1e-5 learnt;
    # 100 * 1000 / 1e6 + 10 * 2000 / 1e6 configured.
    assert charged.usd == pytest.approx(0.01 + 0.05 + 0.001 + 0.12)
    assert charged.estimated_usd == pytest.approx(0.05 + 0.001 + 0.12)
    assert charged.unpriced_calls == 1


async def test_on_redis_only_budgeted_charges_are_written_at_once() -> None:
    """A budgeted key's charge is written as its request settles (it releases the hold);
    a key without a budget is queued and written by the next flush, one write per name."""
    require_redis()
    redis = SharedRedis.connect(REDIS_URL)
    try:
        ledger = Ledger(RedisSpendStore(redis), Pricing({}, PriceBook()))
        policy, _ = budgeted(1.0)
        free = KeyPolicy(name=f"free-{uuid.uuid4().hex[:8]}")
        await ledger.settle(policy, Charge(usd=0.25), await ledger.hold(policy, 0.3))
        for _ in range(3):
            await ledger.settle(free, Charge(usd=0.5), None)
        assert (await ledger.totals(policy)).total == 0.25
        assert (await ledger.totals(free)).total == 0.0  # queued
        await ledger.flush()
        assert (await ledger.totals(free)).total == 1.5
        await ledger.flush()  # nothing left to write twice
        assert (await ledger.totals(free)).total == 1.5
    finally:
        await redis.aclose()
