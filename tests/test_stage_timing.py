"""Where a fused reply's time went: the pure split, and the ``Server-Timing`` header a real
``fusion serve`` sends with it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from fusion_engine.results import FusionResult, PanelResponse
from fusion_engine.stage_timing import StageTimes, server_timing, stage_times
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

KEY = "timing-key"
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
USER = [{"role": "user", "content": "How long does this take?"}]


def test_the_stages_split_the_request() -> None:
    """Members are the fusion minus its judge calls (fallbacks included, one after another);
    the gateway is what the request took beyond the fusion."""
    attempts = [PanelResponse(index=0, model="j1", latency_ms=50.0, error="down"),
                PanelResponse(index=0, model="j2", latency_ms=150.0)]  # fmt: skip
    result = FusionResult(answer="x", total_latency_ms=500.0, judge_attempts=attempts)
    assert stage_times(result, 512.5) == StageTimes(300.0, 200.0, 12.5)
    assert server_timing(StageTimes(300.0, 200.0, 12.5)) == (
        "members;dur=300.0, judge;dur=200.0, gateway;dur=12.5"
    )


def test_a_cached_answer_spent_nothing_on_models() -> None:
    """A cache hit's own timings belong to the request that fused it."""
    result = FusionResult(answer="x", total_latency_ms=900.0, cached=True)
    assert stage_times(result, 3.0) == StageTimes(0.0, 0.0, 3.0)


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(upstream.fake, KEY))
    yield process
    process.stop()


def timings(reply: httpx.Response) -> dict[str, float]:
    header = reply.headers["server-timing"]
    return {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([\d.]+)", header)}


def post(gateway: GatewayProcess, path: str, body: dict[str, object]) -> httpx.Response:
    reply = httpx.post(
        f"{gateway.base_url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "fusion/trio", "messages": USER, "temperature": 0.7}),
        (
            "/v1/responses",
            {"model": "fusion/trio", "input": USER[0]["content"], "temperature": 0.7},
        ),
        (
            "/v1/messages",
            {"model": "fusion/trio", "max_tokens": 64, "messages": USER, "temperature": 0.7},
        ),
        ("/fuse", {"panel": "trio", "messages": USER}),  # takes no generation parameters
    ],
)
def test_fused_replies_say_where_their_time_went(
    gateway: GatewayProcess, fake: FakeUpstream, path: str, body: dict[str, object]
) -> None:
    """Slow members (0.3 s) and a slow judge (0.2 s) show as such on every API; the stages
    add up to the request and the gateway's share is small."""
    for slug in MEMBERS:
        fake.script(slug, Reply(text="Soon.", delay_s=0.3))
    fake.script("e2e/judge", Reply(text="Soon enough.", delay_s=0.2))
    reply = post(gateway, path, body)
    stages = timings(reply)
    assert set(stages) == {"members", "judge", "gateway"}
    assert 300 <= stages["members"] < 1500
    assert 200 <= stages["judge"] < 1500
    assert stages["gateway"] < 200
    assert sum(stages.values()) <= reply.elapsed.total_seconds() * 1000 + 5


def test_streams_and_passthrough_carry_no_stage_timing(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Only a non-streamed fused reply knows its stages when its headers go out."""
    streamed = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "fusion/trio", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
    )  # fmt: skip
    assert streamed.status_code == 200
    assert "server-timing" not in streamed.headers
    progress = httpx.post(
        f"{gateway.base_url}/fuse", json={"panel": "trio", "prompt": "Soon?", "stream": True},
        headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
    )  # fmt: skip
    assert progress.status_code == 200
    assert "event: result" in progress.text
    assert "server-timing" not in progress.headers
    plain = post(gateway, "/v1/chat/completions", {"model": "e2e/alpha", "messages": USER})
    assert "server-timing" not in plain.headers


def overhead_series(gateway: GatewayProcess, route: str) -> tuple[float, float]:
    """``fusion_gateway_overhead_seconds``'s count and sum for ``route``."""
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    figures = {}
    for kind in ("count", "sum"):
        match = re.search(
            rf'^fusion_gateway_overhead_seconds_{kind}\{{route="{re.escape(route)}"\}} (\S+)$',
            text, re.M,
        )  # fmt: skip
        figures[kind] = float(match.group(1)) if match else 0.0
    return figures["count"], figures["sum"]


def test_the_gateways_own_time_is_a_histogram_without_the_models_time(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Fused and passed-through requests add their gateway share to
    ``fusion_gateway_overhead_seconds{route}``: a request that waited 0.5 s on its models adds
    far less than that."""
    for slug in MEMBERS:
        fake.script(slug, Reply(text="Soon.", delay_s=0.3))
    fake.script("e2e/judge", Reply(text="Soon enough.", delay_s=0.2))
    route = "/v1/chat/completions"
    count_before, sum_before = overhead_series(gateway, route)
    post(gateway, route, {"model": "fusion/trio", "messages": USER, "temperature": 0.9})
    post(gateway, route, {"model": "e2e/alpha", "messages": USER})  # passed through, 0.3 s
    count, total = overhead_series(gateway, route)
    assert count == count_before + 2
    assert 0 < total - sum_before < 0.2
