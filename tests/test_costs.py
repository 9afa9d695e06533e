"""The cost ceiling: learnt prices, estimates, refusing and trimming, and the 402 on the wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fusion_engine.config import GatewayConfig, resolve_config
from fusion_engine.costs import ModelPrice, PriceBook, enforce, estimate
from fusion_engine.errors import CostLimitError
from fusion_engine.panels import EstimatedCost, Panel, PanelMember
from fusion_engine.plan import FusionPlan, make_plan
from fusion_engine.results import PanelResponse

from .helpers import REDIS_URL, ROOT, FakeInThread, GatewayProcess, require_redis

CONFIG = resolve_config(GatewayConfig(), {"OPENROUTER_API_KEY": "k"})


def plan_for(*slugs: str, estimated_max: float | None = None) -> FusionPlan:
    cost = EstimatedCost(min=0, max=estimated_max) if estimated_max is not None else None
    panel = Panel(
        name="p", models=[PanelMember(slug=s) for s in slugs], judge_model="j",
        estimated_cost_per_query=cost, min_responses=1,
    )  # fmt: skip
    return make_plan(
        "How long is a piece of string?", panel=panel, panels={},
        templates={"default": "Judge."}, config=CONFIG,
    )  # fmt: skip


def priced(usd_per_token: float, tokens_out: int = 100) -> ModelPrice:
    """A model whose past calls cost ``usd_per_token`` and answered ``tokens_out`` tokens."""
    tokens_in = 100
    return ModelPrice(
        calls=1, cost_usd=usd_per_token * (tokens_in + tokens_out), tokens_in=tokens_in,
        tokens_out=tokens_out,
    )  # fmt: skip


def test_price_book_learns_only_reported_costs() -> None:
    """Calls with a cost are averaged; calls without one (local servers) are ignored."""
    book = PriceBook()
    book.learn(
        PanelResponse(
            index=0, model="m", content="x", tokens_in=100, tokens_out=100, cost_usd=0.002
        )
    )
    book.learn(
        PanelResponse(
            index=0, model="m", content="x", tokens_in=300, tokens_out=100, cost_usd=0.006
        )
    )
    book.learn(PanelResponse(index=0, model="local", content="x", tokens_in=10, tokens_out=10))
    price = book.prices["m"]
    assert price.usd_per_token == pytest.approx(0.008 / 600)
    assert price.mean_tokens_out == 100
    assert "local" not in book.prices


def test_estimate_adds_members_and_judge() -> None:
    """Each member pays for the prompt and its answer; the judge also reads every answer."""
    prices = {"a": priced(1e-5), "b": priced(2e-5), "j": priced(1e-5, tokens_out=50)}
    cost = estimate(plan_for("a", "b"), prices)
    assert cost.members[0] is not None and cost.members[1] is not None
    assert cost.members[1] == pytest.approx(2 * cost.members[0])
    assert cost.judge is not None and cost.judge > cost.members[0]
    assert cost.total == pytest.approx(sum(cost.members) + cost.judge)  # type: ignore[arg-type]


def test_unknown_price_falls_back_to_the_panel_estimate() -> None:
    """A model never priced makes the total the panel's estimated maximum."""
    cost = estimate(
        plan_for("a", "new"),
        {"a": priced(1e-5), "j": priced(1e-5)},
    )
    assert cost.total is None
    cost = estimate(plan_for("a", "new", estimated_max=0.5), {"a": priced(1e-5), "j": priced(1e-5)})
    assert cost.total == 0.5


def test_no_ceiling_or_unknown_cost_passes() -> None:
    """Without a ceiling, or with no way to estimate, the plan goes through unchanged."""
    plan = plan_for("a", "b")
    assert enforce(plan, None, {}) is plan
    assert enforce(plan, 0.0000001, {}) is plan


def test_over_the_ceiling_is_a_402() -> None:
    """With the refuse policy an estimate over the ceiling is refused before any call."""
    with pytest.raises(CostLimitError) as raised:
        enforce(plan_for("a", "b", estimated_max=0.5), 0.1, {})
    assert raised.value.status_code == 402
    assert "$0.5000" in raised.value.message and "$0.1000" in raised.value.message


def test_trim_drops_the_most_expensive_members() -> None:
    """With trim, the dearest members go until the rest and the judge fit; drops are reported."""
    prices = {"cheap": priced(1e-6), "mid": priced(5e-6), "dear": priced(1e-4), "j": priced(1e-6)}
    plan = plan_for("dear", "cheap", "mid")
    full = estimate(plan, prices).total
    assert full is not None
    members = estimate(plan, prices).members
    ceiling = full - members[0] + 1e-9  # room for everything but the dear one  # type: ignore[operator]
    trimmed = enforce(plan, ceiling, prices, policy="trim")
    assert [m.slug for m in trimmed.panel.models] == ["cheap", "mid"]
    assert trimmed.dropped_members == ["dear"]
    assert [p.name for p in trimmed.member_providers] == ["openrouter", "openrouter"]


def test_trim_refuses_when_even_one_member_and_the_judge_do_not_fit() -> None:
    """If the judge with the cheapest member is over the ceiling, trimming cannot help."""
    prices = {"a": priced(1e-4), "j": priced(1e-4)}
    with pytest.raises(CostLimitError):
        enforce(plan_for("a"), 1e-9, prices, policy="trim")


# --- on the wire -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("capped")
    (root / "panels").mkdir()
    (root / "panels" / "pricey.yaml").write_text(
        "name: pricey\nmodels:\n  - slug: e2e/alpha\njudge_model: e2e/judge\n"
        "estimated_cost_per_query: {min: 0.4, max: 0.5}\n"
    )
    config = root / "gateway.yaml"
    config.write_text((ROOT / "tests/e2e_files/gateway.yaml").read_text() + "max_cost_usd: 0.1\n")
    upstream = FakeInThread()
    gateway = GatewayProcess(
        {
            "OPENROUTER_API_KEY": "x", "OPENROUTER_BASE_URL": upstream.fake.base_url,
            "FUSION_PANELS_DIR": str(root / "panels"), "FUSION_JUDGES_DIR": str(ROOT / "judges"),
            "FUSION_CONFIG": str(config), "FUSION_CACHE": "off",
        }
    )  # fmt: skip
    yield gateway
    gateway.stop()
    upstream.close()


def test_gateway_refuses_a_fusion_over_the_ceiling(
    capped_gateway: GatewayProcess, tmp_path: Path
) -> None:
    """max_cost_usd in the gateway config: a panel estimated above it gets a 402, nothing spent."""
    reply = httpx.post(
        f"{capped_gateway.base_url}/v1/chat/completions", timeout=30,
        json={"model": "fusion/pricey", "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert reply.status_code == 402
    error = reply.json()["error"]
    assert error["type"] == "cost_limit_error"
    assert error["code"] == "cost_limit_exceeded"


async def test_prices_are_pooled_through_redis() -> None:
    """Two workers' price books sync through Redis: each ends up with both workers' calls."""
    import uuid

    require_redis()
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    model = f"test/model-{uuid.uuid4().hex}"
    first, second = PriceBook(), PriceBook()
    try:
        first.learn(
            PanelResponse(
                index=0, model=model, content="x", tokens_in=100, tokens_out=100, cost_usd=0.002
            )
        )
        second.learn(
            PanelResponse(
                index=0, model=model, content="x", tokens_in=300, tokens_out=100, cost_usd=0.006
            )
        )
        await first.sync(redis)
        await second.sync(redis)
        await first.sync(redis)  # nothing new to add; takes the shared totals back
        for book in (first, second):
            assert book.prices[model].calls == 2
            assert book.prices[model].cost_usd == pytest.approx(0.008)
            assert book.prices[model].tokens_in == 400
        assert first.unsynced == {} and second.unsynced == {}
    finally:
        await redis.delete(f"fusion:prices:{model}")
        await redis.aclose()


async def test_failed_sync_keeps_the_calls_for_next_time() -> None:
    """When Redis fails, the unsynced calls are kept, not lost."""

    class Broken:
        def pipeline(self, transaction: bool) -> object:
            raise ConnectionError("down")

    book = PriceBook()
    book.learn(
        PanelResponse(index=0, model="m", content="x", tokens_in=10, tokens_out=10, cost_usd=0.001)
    )
    with pytest.raises(ConnectionError):
        await book.sync(Broken())
    assert book.unsynced["m"].calls == 1
