"""Named keys, spend and budgets through a real ``fusion serve`` and the official openai client,
on memory and on the shared Redis: every route charges its key name, a budget stops the right
request with 402, holds bound the overspend of a burst, two processes share one budget."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    E2E_FILES,
    REDIS_URL,
    FakeInThread,
    GatewayProcess,
    config_variant,
    gateway_env,
    require_redis,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    script_fused_panel,
)

MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
JUDGE = "e2e/judge"
#: Every scripted call costs this much: a fusion of trio (3 members and a judge) costs 4 times.
CALL_USD = 0.0015
FUSION_USD = 4 * CALL_USD
PLAIN_MODEL = "vendor/plain"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How much does this cost?"}]
OPS_KEY = "ops-secret-key"


class Keys:
    """A gateway's callers: unique names per test (the shared Redis keeps totals for good)."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.team = f"team-{suffix}"
        self.ops = f"ops-{suffix}"
        self.narrow = f"narrow-{suffix}"
        self.team_key = f"team-key-{suffix}"
        self.narrow_key = f"narrow-key-{suffix}"
        self.slow = f"slow-{suffix}"
        self.slow_key = f"slow-key-{suffix}"

    def environ(self) -> dict[str, str]:
        return {"TEAM_KEY": self.team_key, "NARROW_KEY": self.narrow_key, "SLOW_KEY": self.slow_key}

    def yaml(self, *, limit: float = 0.01, extra_team: str = "") -> str:
        ops_digest = hashlib.sha256(OPS_KEY.encode()).hexdigest()
        return f"""
keys:
  - name: {self.team}
    key_env: TEAM_KEY
    budget_usd: {{limit: {limit}, per: month}}
{extra_team}
  - name: {self.ops}
    key_sha256: {ops_digest}
  - name: {self.narrow}
    key_env: NARROW_KEY
    panels: [quick]
    passthrough: false
  - name: {self.slow}
    key_env: SLOW_KEY
    rate_limit: {{requests_per_minute: 2}}
"""


def start_gateway(
    fake: FakeUpstream, folder: Path, keys: Keys, *, backend: str, limit: float = 0.01, **env: str
) -> GatewayProcess:
    folder.mkdir(parents=True, exist_ok=True)
    config = config_variant(folder, E2E_FILES / "gateway.yaml", append=keys.yaml(limit=limit))
    extra = {"FUSION_CACHE": "off", **keys.environ()}
    if backend == "redis":
        extra["REDIS_URL"] = REDIS_URL
    return GatewayProcess(
        gateway_env(fake, "", config=config, FUSION_RELOAD_INTERVAL_S="0", **extra, **env)
    )


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require_redis()
    return str(request.param)


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def gateway(
    upstream: FakeInThread, backend: str, keys: Keys, tmp_path: Path
) -> Iterator[GatewayProcess]:
    with start_gateway(upstream.fake, tmp_path, keys, backend=backend) as process:
        yield process


def script_costs(fake: FakeUpstream, **reply: Any) -> None:
    """Every member and judge call of trio costs ``CALL_USD``; so does the plain model."""
    priced = Reply(cost=CALL_USD, **reply)
    script_fused_panel(fake, dict.fromkeys(MEMBERS, priced), JUDGE, priced)
    fake.script(PLAIN_MODEL, priced)


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)


def spend(gateway: GatewayProcess, key: str) -> dict[str, Any]:
    reply = httpx.get(
        f"{gateway.base_url}/v1/spend", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def spent_settles(gateway: GatewayProcess, key: str, expected: float) -> dict[str, Any]:
    """The key's report once its all-time spend reaches ``expected`` (a request settles after
    its last byte, so right after a reply the spend may be a moment behind)."""
    deadline = time.monotonic() + 5
    while True:
        report = spend(gateway, key)
        if report["total_usd"] >= expected - 1e-9 or time.monotonic() > deadline:
            return report
        time.sleep(0.05)


# --- a budget stops the right request ----------------------------------------------------------


def test_a_budget_of_a_cent_stops_the_request_that_would_cross_it(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    """$0.01 a month, $0.006 a fusion: the first fusion is served, the second would cross the
    budget and gets 402 budget_exceeded naming the numbers, and nothing more is spent."""
    script_costs(fake)
    team = client(gateway, keys.team_key)
    first = team.chat.completions.create(model="fusion/trio", messages=USER)
    assert first.model_extra is not None
    assert first.model_extra["fusion"]["total_cost"] == pytest.approx(FUSION_USD)
    report = spent_settles(gateway, keys.team_key, FUSION_USD)
    assert report["budget"]["spent_usd"] == pytest.approx(FUSION_USD)
    calls_before = len(fake.received)
    with pytest.raises(openai.APIStatusError) as refused:
        team.chat.completions.create(model="fusion/trio", messages=USER)
    error = refused.value
    assert error.status_code == 402
    assert error.response.headers.get("x-should-retry") == "false"
    body = error.response.json()["error"]
    assert body["code"] == "budget_exceeded"
    assert keys.team in body["message"] and "$0.0100" in body["message"]
    assert "spent $0.0060" in body["message"]
    assert len(fake.received) == calls_before  # refused before any upstream call
    after = spend(gateway, keys.team_key)
    assert after["total_usd"] == pytest.approx(FUSION_USD)
    assert after["budget"] == {
        "limit_usd": 0.01, "per": "month", "period": time.strftime("%Y-%m", time.gmtime()),
        "spent_usd": pytest.approx(FUSION_USD), "held_usd": 0.0,
        "remaining_usd": pytest.approx(0.01 - FUSION_USD),
    }  # fmt: skip


def test_a_key_without_a_budget_is_charged_and_never_refused(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    """The sha256-configured key has no budget: its spend is counted, nothing is refused."""
    script_costs(fake)
    ops = client(gateway, OPS_KEY)
    for _ in range(3):
        ops.chat.completions.create(model="fusion/trio", messages=USER)
    report = spent_settles(gateway, OPS_KEY, 3 * FUSION_USD)
    assert report["key"] == keys.ops
    assert report["budget"] is None
    assert report["total_usd"] == report["month_usd"] == report["day_usd"]
    assert report["total_usd"] == pytest.approx(3 * FUSION_USD)
    assert report["estimated_usd"] == 0.0


# --- every route charges its key --------------------------------------------------------------


def _chat(base: str, key: str, model: str, stream: bool) -> None:
    reply = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    if stream:
        for _ in reply.chat.completions.create(model=model, messages=USER, stream=True):
            pass
    else:
        reply.chat.completions.create(model=model, messages=USER)


def _responses(base: str, key: str, model: str, stream: bool) -> None:
    reply = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    if stream:
        for _ in reply.responses.create(model=model, input="How much?", stream=True):
            pass
    else:
        reply.responses.create(model=model, input="How much?")


def _messages(base: str, key: str, model: str, stream: bool) -> None:
    body = {"model": model, "max_tokens": 64, "messages": USER, "stream": stream}
    reply = httpx.post(f"{base}/v1/messages", json=body, headers={"x-api-key": key}, timeout=30)
    assert reply.status_code == 200, reply.text


def _fuse(base: str, key: str, model: str, stream: bool) -> None:
    body = {"prompt": "How much?", "panel": model.removeprefix("fusion/"), "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    reply = httpx.post(f"{base}/fuse", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text


ROUTES = {"chat": _chat, "responses": _responses, "messages": _messages}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("route", ["chat", "responses", "messages", "fuse"])
@pytest.mark.parametrize("model", ["fusion/trio", PLAIN_MODEL], ids=["fused", "passthrough"])
def test_every_route_charges_its_key(
    gateway: GatewayProcess, fake: FakeUpstream, route: str, stream: bool, model: str
) -> None:
    """Chat, Responses, Messages and /fuse, streamed or not, fused or passed through: the key
    is charged exactly what the provider reported (LiteLLM #38176: Responses and Messages spend
    was never counted)."""
    if route == "fuse" and model == PLAIN_MODEL:
        pytest.skip("/fuse runs panels only")
    script_costs(fake)
    call = {**ROUTES, "fuse": _fuse}[route]
    call(gateway.base_url, OPS_KEY, model, stream)
    expected = FUSION_USD if model.startswith("fusion/") else CALL_USD
    report = spent_settles(gateway, OPS_KEY, expected)
    assert report["total_usd"] == pytest.approx(expected)


def test_embeddings_charge_their_key(gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """Embeddings are passed through and charged by their usage too: the fake reports tokens
    but no cost, and no price is configured, so the call is counted as unpriced."""
    client(gateway, OPS_KEY).embeddings.create(model="vendor/embed", input="charge me")
    deadline = time.monotonic() + 5
    while (report := spend(gateway, OPS_KEY))["unpriced_calls"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report["unpriced_calls"] == 1
    assert report["total_usd"] == 0.0


# --- unknown cost is estimated, never zero ----------------------------------------------------


def test_calls_without_a_reported_cost_are_charged_at_configured_prices(
    upstream: FakeInThread, fake: FakeUpstream, keys: Keys, tmp_path: Path, backend: str
) -> None:
    """A provider that reports no cost (a local server): the calls are charged at the YAML's
    ``prices:``, and the report says that part is estimated."""
    prices = "\nprices:\n" + "".join(
        f"  {slug}: {{input_per_mtok: 1000, output_per_mtok: 2000}}\n" for slug in (*MEMBERS, JUDGE)
    )
    config = config_variant(tmp_path, E2E_FILES / "gateway.yaml", append=keys.yaml() + prices)
    env = keys.environ()
    if backend == "redis":
        env["REDIS_URL"] = REDIS_URL
    local = Reply(include_cost=False)
    script_fused_panel(fake, dict.fromkeys(MEMBERS, local), JUDGE, local)
    with GatewayProcess({**gateway_env(fake, "", config=config), **env}) as gateway:
        reply = client(gateway, OPS_KEY).chat.completions.create(
            model="fusion/trio",
            messages=USER,
        )
        assert reply.model_extra is not None
        detail = reply.model_extra["fusion"]
        assert detail["total_cost"] is None  # nothing reported it
        calls = [*detail["members"], detail["judge"]]
        expected = sum(c["tokens_in"] * 1000 / 1e6 + c["tokens_out"] * 2000 / 1e6 for c in calls)
        report = spent_settles(gateway, OPS_KEY, expected)
    assert report["total_usd"] == pytest.approx(expected)
    assert report["estimated_usd"] == pytest.approx(expected)
    assert report["unpriced_calls"] == 0


def test_calls_no_price_covers_are_reported_not_silently_free(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """No reported cost and no price anywhere: each call is counted as unpriced."""
    local = Reply(include_cost=False)
    script_fused_panel(fake, dict.fromkeys(MEMBERS, local), JUDGE, local)
    client(gateway, OPS_KEY).chat.completions.create(model="fusion/trio", messages=USER)
    deadline = time.monotonic() + 5
    while (report := spend(gateway, OPS_KEY))["unpriced_calls"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report["unpriced_calls"] == 4
    assert "call_without_price" in gateway.output()


# --- a fusion cut short is charged what it spent ----------------------------------------------


def test_a_fusion_the_client_left_is_charged_what_it_spent(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """One member answers at once, the other takes 5 s; the client leaves after 1 s. The answer
    is charged, and the other call, cut off in flight, is reported (no price is known for it
    yet, so as unpriced)."""
    fake.script("e2e/patient-a", Reply(cost=CALL_USD))
    fake.script("e2e/patient-b", Reply(cost=CALL_USD, delay_s=5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json={"model": "fusion/patient", "messages": USER},
            headers={"Authorization": f"Bearer {OPS_KEY}"},
            timeout=1,
        )
    deadline = time.monotonic() + 8
    while (report := spend(gateway, OPS_KEY))["unpriced_calls"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert report["total_usd"] == pytest.approx(CALL_USD)
    assert report["unpriced_calls"] == 1


# --- key policies -----------------------------------------------------------------------------


def test_a_panel_allow_list_and_the_passthrough_switch(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    """The narrow key may fuse ``quick`` only: trio, an ad-hoc member list and a plain model id
    are 403 permission errors naming what is allowed; ops may do all three."""
    script_costs(fake)
    narrow = client(gateway, keys.narrow_key)
    for model, extra in (
        ("fusion/trio", {}),
        ("fusion/trio", {"fusion": {"models": ["e2e/alpha", "e2e/beta"], "judge_model": JUDGE}}),
        (PLAIN_MODEL, {}),
    ):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            narrow.chat.completions.create(model=model, messages=USER, extra_body=extra)
        assert refused.value.response.json()["error"]["type"] == "permission_error"
        assert keys.narrow in refused.value.message
    assert "allowed: quick" in _message_for(narrow, "fusion/trio")
    client(gateway, OPS_KEY).chat.completions.create(model="fusion/trio", messages=USER)
    client(gateway, OPS_KEY).chat.completions.create(model=PLAIN_MODEL, messages=USER)


def test_the_model_list_shows_a_key_what_it_may_use(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    """A key with an allow-list sees its panels and no provider models (passthrough off);
    an unrestricted key, and a caller sending no key, see everything."""
    fake.script(PLAIN_MODEL, Reply())
    narrow = [model.id for model in client(gateway, keys.narrow_key).models.list()]
    assert narrow == ["fusion/quick"]
    everything = [model.id for model in client(gateway, OPS_KEY).models.list()]
    assert {"fusion/quick", "fusion/trio"} <= set(everything) and len(everything) > 3
    anonymous = httpx.get(f"{gateway.base_url}/v1/models", timeout=10).json()["data"]
    assert [model["id"] for model in anonymous] == everything


def _message_for(api: openai.OpenAI, model: str) -> str:
    try:
        api.chat.completions.create(model=model, messages=USER)
    except openai.APIStatusError as error:
        return str(error.message)
    raise AssertionError("not refused")


def test_a_key_rate_limit_overrides_the_default(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    """The slow key's 2 requests a minute: its third is 429; ops (the default, unlimited) is
    not affected."""
    headers = {"Authorization": f"Bearer {keys.slow_key}"}
    statuses = [
        httpx.get(f"{gateway.base_url}/v1/spend", headers=headers, timeout=10).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert spend(gateway, OPS_KEY)["key"] == keys.ops


def test_the_key_name_labels_requests_and_spend_in_metrics(
    gateway: GatewayProcess, fake: FakeUpstream, keys: Keys
) -> None:
    script_costs(fake)
    client(gateway, keys.team_key).chat.completions.create(model="fusion/trio", messages=USER)
    spent_settles(gateway, keys.team_key, FUSION_USD)
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    assert re.search(
        rf'fusion_requests_total{{[^}}]*key="{keys.team}"[^}}]*status="200"', text
    ) or re.search(rf'fusion_requests_total{{[^}}]*status="200"[^}}]*key="{keys.team}"', text)
    spent = re.search(rf'fusion_key_spend_usd_total{{key="{keys.team}"}} (\S+)', text)
    assert spent is not None and float(spent.group(1)) == pytest.approx(FUSION_USD)
    budget = re.search(rf'fusion_key_budget_usd{{key="{keys.team}"}} (\S+)', text)
    assert budget is not None and float(budget.group(1)) == pytest.approx(0.01)
    # Updated as the fusion settled, not only at the next budget check.
    period = re.search(rf'fusion_key_period_spend_usd{{key="{keys.team}"}} (\S+)', text)
    assert period is not None and float(period.group(1)) == pytest.approx(FUSION_USD)


# --- holds bound the overspend of a burst ------------------------------------------------------


def test_a_burst_of_200_cannot_overspend_a_tight_budget(
    upstream: FakeInThread, fake: FakeUpstream, keys: Keys, tmp_path: Path, backend: str
) -> None:
    """200 concurrent fusions against $0.05 once the prices are known: each holds its estimate
    until it settles, so what is admitted fits in the budget whatever the timing. The overspend
    is bounded by how far the admitted fusions cost more than their estimates; here the fake's
    prices are steady, so it is 0. Without holds every one of the 200 would pass the check."""
    limit = 0.05
    script_costs(fake, delay_s=0.3)
    with start_gateway(fake, tmp_path, keys, backend=backend, limit=limit) as gateway:
        # One fusion teaches the gateway the prices (the first estimate is unknown).
        client(gateway, keys.team_key).chat.completions.create(model="fusion/trio", messages=USER)
        spent_settles(gateway, keys.team_key, FUSION_USD)
        statuses, _ = asyncio.run(_burst(gateway, keys.team_key, 200))
        admitted = statuses.count(200)
        report = spent_settles(gateway, keys.team_key, (admitted + 1) * FUSION_USD)
    print(f"burst of 200 at ${limit}: {admitted} admitted, spent ${report['total_usd']:.4f}")
    assert set(statuses) <= {200, 402}, statuses
    assert admitted >= 1 and statuses.count(402) >= 150
    assert report["total_usd"] == pytest.approx((admitted + 1) * FUSION_USD)
    assert report["total_usd"] <= limit + 1e-9
    assert report["budget"]["held_usd"] == 0.0  # every hold was released


def test_underestimated_fusions_overspend_by_at_most_their_shortfall(
    upstream: FakeInThread, fake: FakeUpstream, keys: Keys, tmp_path: Path, backend: str
) -> None:
    """The bound, measured where it bites: the prices are learnt at $0.0015 a call, then every
    call costs 3 times that. Each admitted fusion was held at its estimate E (the 402s name it)
    and costs C = $0.018, so the overspend is at most admitted * (C - E); it is there, and no
    more."""
    limit = 0.05
    script_costs(fake, delay_s=0.3)
    dearer = Reply(cost=3 * CALL_USD, delay_s=0.3)
    with start_gateway(fake, tmp_path, keys, backend=backend, limit=limit) as gateway:
        client(gateway, keys.team_key).chat.completions.create(model="fusion/trio", messages=USER)
        spent_settles(gateway, keys.team_key, FUSION_USD)
        script_fused_panel(fake, dict.fromkeys(MEMBERS, dearer), JUDGE, dearer)
        statuses, refusals = asyncio.run(_burst(gateway, keys.team_key, 200))
        admitted = statuses.count(200)
        cost = 4 * 3 * CALL_USD
        report = spent_settles(gateway, keys.team_key, FUSION_USD + admitted * cost)
    estimates = {float(m) for m in re.findall(r"estimate of \$([\d.]+)", " ".join(refusals))}
    assert len(estimates) == 1, estimates  # one conversation, one estimate
    estimate = estimates.pop()
    overspend = report["total_usd"] - limit
    bound = admitted * (cost - estimate)
    print(
        f"underestimated burst: estimate ${estimate:.4f}, cost ${cost:.4f}, {admitted} admitted,"
        f" spent ${report['total_usd']:.4f} of ${limit}: overspend ${overspend:.4f},"
        f" bound ${bound:.4f}"
    )
    assert admitted >= 1 and set(statuses) <= {200, 402}
    assert report["total_usd"] == pytest.approx(FUSION_USD + admitted * cost)
    rounding = admitted * 5e-5 + 1e-9  # the message shows the estimate to 4 decimals
    assert FUSION_USD + admitted * estimate <= limit + rounding  # what was held fitted
    assert overspend <= bound + rounding


async def _burst(gateway: GatewayProcess, key: str, count: int) -> tuple[list[int], list[str]]:
    """``count`` concurrent fused requests: their statuses, and the messages of the refused."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one() -> httpx.Response:
            return await http.post(
                f"{gateway.base_url}/v1/chat/completions",
                json={"model": "fusion/trio", "messages": USER},
                headers={"Authorization": f"Bearer {key}"},
            )

        replies = await asyncio.gather(*(one() for _ in range(count)))
    refused = [r.json()["error"]["message"] for r in replies if r.status_code == 402]
    return [reply.status_code for reply in replies], refused


# --- two processes, one budget -----------------------------------------------------------------


def test_two_gateways_on_one_redis_share_one_budget(
    upstream: FakeInThread, fake: FakeUpstream, keys: Keys, tmp_path: Path
) -> None:
    """A budget of exactly one fusion: what A charged, B sees and enforces (B refuses the
    next fusion); the totals survive both processes (a third one reads them)."""
    require_redis()
    script_costs(fake)
    with (
        start_gateway(fake, tmp_path / "a", keys, backend="redis", limit=FUSION_USD) as first,
        start_gateway(fake, tmp_path / "b", keys, backend="redis", limit=FUSION_USD) as second,
    ):
        client(first, keys.team_key).chat.completions.create(model="fusion/trio", messages=USER)
        assert spent_settles(first, keys.team_key, FUSION_USD)["total_usd"] == pytest.approx(
            FUSION_USD
        )
        assert spend(second, keys.team_key)["total_usd"] == pytest.approx(FUSION_USD)
        with pytest.raises(openai.APIStatusError) as refused:
            client(second, keys.team_key).chat.completions.create(
                model="fusion/trio", messages=USER
            )
        assert refused.value.status_code == 402
    with start_gateway(fake, tmp_path / "c", keys, backend="redis", limit=FUSION_USD) as third:
        over_http = spend(third, keys.team_key)
    assert over_http["total_usd"] == pytest.approx(FUSION_USD)
    # The operator's view: `fusion spend` reads the same figures from the same Redis (without
    # the keys' variables: it needs only their names).
    config = tmp_path / "c" / "gateway.yaml"
    listed = subprocess.run(
        [sys.executable, "-m", "fusion_engine.cli", "spend", "--json"],
        env={"PATH": os.environ["PATH"], "FUSION_CONFIG": str(config), "REDIS_URL": REDIS_URL},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    reports = {report["key"]: report for report in json.loads(listed.stdout)}
    assert set(reports) == {keys.team, keys.ops, keys.narrow, keys.slow}
    assert reports[keys.team] == over_http
    table = subprocess.run(
        [sys.executable, "-m", "fusion_engine.cli", "spend", keys.team],
        env={"PATH": os.environ["PATH"], "FUSION_CONFIG": str(config), "REDIS_URL": REDIS_URL},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert keys.team in table.stdout and "0.0060" in table.stdout


def test_a_fresh_key_reports_zero_in_every_field(gateway: GatewayProcess) -> None:
    """The report's fields, as docs/operations.md and the OpenAPI document name them."""
    report = spend(gateway, OPS_KEY)
    assert report == {
        "object": "spend", "key": report["key"], "day_usd": 0.0, "month_usd": 0.0,
        "total_usd": 0.0, "estimated_usd": 0.0, "unpriced_calls": 0, "budget": None,
    }  # fmt: skip
