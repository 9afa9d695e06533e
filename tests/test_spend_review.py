"""Review of keys, budgets and spend: ways a caller or a provider could spend without being
charged, or get around a budget, and config that silently means no budget."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from fusion_engine.config import (
    BudgetSpec,
    ConfiguredKey,
    KeySpec,
    RateLimitSpec,
    load_config,
)
from fusion_engine.costs import PriceBook, Pricing
from fusion_engine.errors import ConfigError, ConfigFileError
from fusion_engine.keys import KeyPolicy, key_ring
from fusion_engine.results import PanelResponse
from fusion_engine.server.passthrough import _charge
from fusion_engine.settings import ApiKey, Secret, Settings
from fusion_engine.spend import Ledger, charge_call
from fusion_engine.spend_store import MemorySpendStore
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import FakeInThread, GatewayProcess
from .helpers import reset_fake as reset_fake
from .test_spend_e2e import (
    CALL_USD,
    OPS_KEY,
    PLAIN_MODEL,
    USER,
    Keys,
    client,
    script_costs,
    spent_settles,
    start_gateway,
)


def config_error(tmp_path: Path, text: str, **environ: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        load_config(Settings.from_environ({"FUSION_CONFIG": str(path), **environ}))
    return str(raised.value)


def budgeted_tab(limit: float = 1.0) -> tuple[Ledger, Any]:
    from fusion_engine.config import PriceSpec

    pricing = Pricing(
        {"local/model": PriceSpec(input_per_mtok=1000, output_per_mtok=1000)}, PriceBook()
    )
    ledger = Ledger(MemorySpendStore(), pricing)
    policy = KeyPolicy(name="team", budget=BudgetSpec(limit=limit, per="month"))
    return ledger, ledger.open(policy)


async def test_a_negative_cost_reported_by_a_provider_never_lowers_the_spend() -> None:
    """A provider (or a compromised/buggy one) reporting ``usage.cost: -5`` must not credit
    the key: spend only goes up, and the price book does not learn a negative price."""
    _, tab = budgeted_tab()
    charge_call(
        PanelResponse(index=0, model="local/model", tokens_in=10, tokens_out=10, cost_usd=-5.0)
    )
    # Negative token counts without a cost, priced at configured prices, must not credit it.
    charge_call(PanelResponse(index=1, model="local/model", tokens_in=-(10**9), tokens_out=1))
    assert tab.charged.usd >= 0
    # An answer with a negative cost and no tokens is one with no usage: estimated, not free.
    _, tab = budgeted_tab()
    tab.prompt = [{"role": "user", "content": "x" * 320}]
    charge_call(PanelResponse(index=2, model="local/model", content="answer", cost_usd=-1.0))
    charge_call(PanelResponse(index=3, model="local/model", content="answer", tokens_in=-5))
    assert tab.charged.usd > 0.19  # two prompts of 100 tokens at $1000 per million
    book = PriceBook()
    book.learn_usage("cloud/model", 10, 10, -5.0)
    assert "cloud/model" not in book.prices or book.prices["cloud/model"].cost_usd >= 0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "keys: [{name: t, key_env: K, budget_usd: {limit: .nan}}]",
            "keys[0] (t).budget_usd.limit",
        ),
        (
            "keys: [{name: t, key_env: K, budget_usd: {limit: .inf}}]",
            "keys[0] (t).budget_usd.limit",
        ),
        ("prices: {m: {input_per_mtok: .nan, output_per_mtok: 1}}", "prices.m"),
        ("prices: {m: {input_per_mtok: 1, output_per_mtok: .inf}}", "prices.m"),
    ],
)
def test_a_budget_or_price_that_is_not_a_number_is_refused(
    tmp_path: Path, text: str, names: str
) -> None:
    """``limit: .nan`` compares false with everything, so it passed ``<= 0`` and then every
    hold passed too: a budget that silently was none. A NaN price poisons every charge."""
    assert names in config_error(tmp_path, text, K="v")


async def test_a_passthrough_answer_without_usage_is_charged_its_prompt() -> None:
    """A non-streamed passthrough answer whose provider reported no ``usage`` was charged
    nothing: a key could spend on such a provider for free. It is charged its prompt (at
    least), estimated, as a stream without a usage chunk is."""
    _, tab = budgeted_tab()
    tab.prompt = [{"role": "user", "content": "x" * 320}]
    _charge(cast(Any, None), tab, "local/model", None)
    assert tab.charged.usd > 0
    assert tab.charged.estimated_usd == tab.charged.usd


def test_one_key_under_two_names_is_refused() -> None:
    """The same secret as ``free:<key>`` in FUSION_SERVER_API_KEYS and as a budgeted YAML key
    (or as two YAML names) matched the first name only: the budget, allow-list and limits the
    operator wrote for the other name silently never applied. It is refused, without the key."""
    secret = "shared-secret-key"
    budgeted = ConfiguredKey(
        digest=hashlib.sha256(secret.encode()).digest(),
        spec=KeySpec(name="team", key_env="TEAM_KEY", budget_usd=BudgetSpec(limit=1.0)),
    )
    with pytest.raises(ConfigError) as raised:
        key_ring([ApiKey(name="free", secret=Secret(secret))], [budgeted], RateLimitSpec())
    assert "team" in str(raised.value) and "free" in str(raised.value)
    assert secret not in str(raised.value)
    other = ConfiguredKey(digest=budgeted.digest, spec=KeySpec(name="other", key_env="OTHER"))
    with pytest.raises(ConfigError):
        key_ring([], [budgeted, other], RateLimitSpec())
    # Rotation (two entries of one name) and unset keys (``fusion spend``) stay allowed.
    key_ring([], [budgeted, budgeted], RateLimitSpec())
    unset = [ConfiguredKey(digest=b"", spec=KeySpec(name=n, key_env="X")) for n in ("a", "b")]
    key_ring([], unset, RateLimitSpec())


@pytest.fixture
def narrow_gateway(upstream: FakeInThread, tmp_path: Path) -> Iterator[tuple[GatewayProcess, Keys]]:
    keys = Keys()
    with start_gateway(upstream.fake, tmp_path, keys, backend="memory") as process:
        yield process, keys


def test_a_judge_model_override_is_not_a_way_around_the_allow_list(
    narrow_gateway: tuple[GatewayProcess, Keys], fake: FakeUpstream
) -> None:
    """The narrow key may fuse ``quick`` only and has no passthrough; ``fusion.judge_model``
    (chat) or ``judge_model`` (/fuse) on its allowed panel ran any model it named as the
    judge: a plain call to a model it may not use, at that model's price. Overriding the
    judge is choosing models, as an ad-hoc member list is: it needs ``ad-hoc``."""
    gateway, keys = narrow_gateway
    script_costs(fake)
    fake.script(PLAIN_MODEL, Reply(text="expensive judge", cost=CALL_USD))
    narrow = client(gateway, keys.narrow_key)
    with pytest.raises(openai.PermissionDeniedError):
        narrow.chat.completions.create(
            model="fusion/quick", messages=USER, extra_body={"fusion": {"judge_model": PLAIN_MODEL}}
        )
    fused = httpx.post(
        f"{gateway.base_url}/fuse",
        headers={"Authorization": f"Bearer {keys.narrow_key}"},
        json={"panel": "quick", "prompt": "hi", "judge_model": PLAIN_MODEL},
        timeout=30,
    )
    assert fused.status_code == 403, fused.text
    assert fake.requests_for(PLAIN_MODEL) == []


def test_a_negative_cost_does_not_break_the_call_metrics() -> None:
    """Every call goes through ``Metrics.observe_call`` before it is charged; a Prometheus
    counter raises on a negative increment, so a provider's ``usage.cost: -1`` raised out of
    the engine's call observer (the request failed, and the call was never charged)."""
    from fusion_engine.server.metrics import Metrics

    metrics = Metrics()
    metrics.observe_call(
        PanelResponse(index=0, model="cloud/model", tokens_in=1, tokens_out=1, cost_usd=-1.0)
    )
    metrics.observe_call(PanelResponse(index=1, model="cloud/model", tokens_in=-1, tokens_out=-1))


def test_a_passthrough_call_the_client_left_is_charged_its_prompt(
    narrow_gateway: tuple[GatewayProcess, Keys], fake: FakeUpstream
) -> None:
    """A non-streamed passthrough call the client hung up on was cancelled and charged
    nothing, though the provider had read (and bills) the prompt: a caller could run any
    number of calls for free by leaving just before each answer. It is charged its prompt
    at the model's price, as a fusion's member cut off in flight is."""
    gateway, _ = narrow_gateway
    fake.script(PLAIN_MODEL, Reply(cost=CALL_USD))  # teaches the gateway the model's price
    client(gateway, OPS_KEY).chat.completions.create(model=PLAIN_MODEL, messages=USER)
    before = spent_settles(gateway, OPS_KEY, CALL_USD)["total_usd"]
    fake.script(PLAIN_MODEL, Reply(cost=CALL_USD, delay_s=3))
    long_prompt = [{"role": "user", "content": "word " * 2_000}]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {OPS_KEY}"},
            json={"model": PLAIN_MODEL, "messages": long_prompt},
            timeout=1.0,
        )
    report = spent_settles(gateway, OPS_KEY, before + 1e-6)
    assert report["total_usd"] > before
    assert report["estimated_usd"] > 0


async def test_a_call_that_timed_out_in_flight_is_charged_its_prompt() -> None:
    """A member or judge that ran out of time was generating (and is billed) until then, but
    ``timeout`` was charged nothing, unlike ``cancelled`` or ``deadline``: a prompt that makes
    a reasoning model think past the panel's timeout spent for free. Charged its prompt."""
    _, tab = budgeted_tab()
    tab.prompt = [{"role": "user", "content": "x" * 320}]
    charge_call(PanelResponse(index=0, model="local/model", error="slow", error_kind="timeout"))
    assert tab.charged.usd > 0
