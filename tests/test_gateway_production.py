"""The gateway as an operator runs it: Redis cache, reloads, metrics across workers, logs.

Real `fusion serve` processes against the fake upstream and a real Redis (the shared one on
127.0.0.1:6379, database 15, with unique questions per test; a private redis-server for the
fault test)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    REDIS_URL,
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    private_redis,
    require_redis,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)

KEY = "production-key"
PROVIDER_KEY = "provider-key-that-must-not-leak"
FILES = ROOT / "tests" / "e2e_files"
MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
JUDGE = "e2e/judge"


@pytest.fixture(scope="module")
def definitions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Private copies of the panels and judges, so tests can edit them."""
    root = tmp_path_factory.mktemp("definitions")
    shutil.copytree(FILES / "panels", root / "panels")
    shutil.copytree(ROOT / "judges", root / "judges")
    return root


def environment(upstream: FakeInThread, definitions: Path, **extra: str) -> dict[str, str]:
    """The e2e config with the private panels and judges, reloaded every 0.2 s, JSON logs."""
    return gateway_env(
        upstream.fake,
        KEY,
        provider_key=PROVIDER_KEY,
        panels=definitions / "panels",
        judges=definitions / "judges",
        FUSION_RELOAD_INTERVAL_S="0.2",
        FUSION_LOG_FORMAT="json",
        **extra,
    )


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread, definitions: Path) -> Iterator[GatewayProcess]:
    require_redis()
    process = GatewayProcess(
        environment(upstream, definitions, FUSION_CACHE="redis", REDIS_URL=REDIS_URL)
    )
    yield process
    process.stop()


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as client:
        yield client


def ask(http: httpx.Client, question: str, **extra: object) -> httpx.Response:
    headers = extra.pop("headers", None)
    # Seeded: a deterministic request, which the panels' default `cache: auto` caches.
    body = {"model": "fusion/trio", "messages": [{"role": "user", "content": question}], "seed": 1}
    body.update(extra)
    return http.post("/v1/chat/completions", json=body, headers=headers)  # type: ignore[arg-type]


def fan_outs(fake: FakeUpstream) -> int:
    """How many times the panel was asked (one request to the first member per fusion)."""
    return len(fake.requests_for(MEMBERS[0]))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text
    exposition (0 when none)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if match and wanted <= set((match.group(1) or "").split(",")):
            total += float(match.group(2))
    return total


# --- cache through the gateway ---------------------------------------------------------------


def test_second_identical_request_is_a_cache_hit(http: httpx.Client, fake: FakeUpstream) -> None:
    """miss, then hit: the fake sees one fan-out and the hit is marked cached."""
    question = f"cache me {uuid.uuid4().hex}"
    first = ask(http, question)
    second = ask(http, question)
    assert first.headers["x-fusion-cache"] == "miss"
    assert second.headers["x-fusion-cache"] == "hit"
    assert second.json()["fusion"]["cached"] is True
    assert second.json()["choices"] == first.json()["choices"]
    assert fan_outs(fake) == 1


def test_cache_control_headers(http: httpx.Client, fake: FakeUpstream) -> None:
    """no-store leaves nothing behind; no-cache fuses again even when an entry exists."""
    question = f"cache control {uuid.uuid4().hex}"
    assert (
        ask(http, question, headers={"Cache-Control": "no-store"}).headers["x-fusion-cache"]
        == "miss"
    )
    assert ask(http, question).headers["x-fusion-cache"] == "miss"
    assert (
        ask(http, question, headers={"Cache-Control": "no-cache"}).headers["x-fusion-cache"]
        == "miss"
    )
    assert ask(http, question).headers["x-fusion-cache"] == "hit"
    assert fan_outs(fake) == 3


def test_streamed_request_is_replayed_from_the_cache(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    """A cached answer streams back as chunks, with no upstream call."""
    question = f"stream from cache {uuid.uuid4().hex}"
    plain = ask(http, question).json()
    with http.stream(
        "POST", "/v1/chat/completions",
        json={"model": "fusion/trio", "stream": True, "seed": 1, "messages": [{"role": "user", "content": question}]},
    ) as reply:  # fmt: skip
        assert reply.headers["x-fusion-cache"] == "hit"
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert fan_outs(fake) == 1


def test_identical_concurrent_requests_fan_out_once(
    gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Five identical requests at once: one fusion, five answers."""
    for member in MEMBERS:
        fake.script(member, Reply(text=f"{member} slow", delay_s=0.5))
    question = f"together {uuid.uuid4().hex}"
    replies: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(
            base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ) as client:
            replies.append(ask(client, question))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [reply.status_code for reply in replies] == [200] * 5
    assert sorted(reply.headers["x-fusion-cache"] for reply in replies).count("miss") == 1
    assert fan_outs(fake) == 1


# --- reload ------------------------------------------------------------------------------------


def wait_for_reload(http: httpx.Client, result: str, before: float) -> None:
    assert wait_until(
        lambda: (
            metric(http.get("/metrics").text, "fusion_config_reloads_total", result=result) > before
        ),
        timeout_s=10,
    ), f"no {result} reload seen"


def test_template_edit_reloads_and_changes_the_key(
    http: httpx.Client, fake: FakeUpstream, definitions: Path
) -> None:
    """Editing a judge template is picked up without a restart and never serves a stale answer."""
    question = f"template edit {uuid.uuid4().hex}"
    assert ask(http, question).headers["x-fusion-cache"] == "miss"
    before = metric(http.get("/metrics").text, "fusion_config_reloads_total", result="ok")
    template = definitions / "judges" / "default.md"
    template.write_text(template.read_text() + "\n\nAlways be kind.\n")
    wait_for_reload(http, "ok", before)
    assert ask(http, question).headers["x-fusion-cache"] == "miss"
    assert "Always be kind." in fake.requests_for(JUDGE)[-1].body["messages"][0]["content"]
    assert fan_outs(fake) == 2


def test_new_panel_appears_and_broken_edit_keeps_the_last_good_set(
    http: httpx.Client, definitions: Path
) -> None:
    """A new panel file shows up in /v1/models; a broken one is refused and counted."""
    before = metric(http.get("/metrics").text, "fusion_config_reloads_total", result="ok")
    extra = definitions / "panels" / "extra.yaml"
    extra.write_text("name: extra\nmodels:\n  - slug: e2e/alpha\njudge_model: e2e/judge\n")
    wait_for_reload(http, "ok", before)
    assert "fusion/extra" in {m["id"] for m in http.get("/v1/models").json()["data"]}
    errors_before = metric(http.get("/metrics").text, "fusion_config_reloads_total", result="error")
    broken = definitions / "panels" / "broken.yaml"
    broken.write_text("name: broken\nmodels: []\njudge_model: j\n")
    try:
        wait_for_reload(http, "error", errors_before)
        models = {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert {"fusion/extra", "fusion/trio"} <= models
        assert "fusion/broken" not in models
    finally:
        broken.unlink()
        extra.unlink()


# --- metrics and logs ----------------------------------------------------------------------------


def test_every_metric_family_moves(http: httpx.Client, fake: FakeUpstream) -> None:
    """After a fused request, every family of the design is exposed with the right labels."""
    before = http.get("/metrics").text
    assert ask(http, f"metrics {uuid.uuid4().hex}").status_code == 200
    after = http.get("/metrics").text
    moved = {
        "fusion_requests_total": {
            "route": "/v1/chat/completions",
            "panel": "trio",
            "status": "200",
            # The unnamed key of FUSION_SERVER_API_KEYS is named key1.
            "key": "key1",
        },
        "fusion_request_duration_seconds_count": {"route": "/v1/chat/completions", "panel": "trio"},
        "fusion_upstream_requests_total": {"model": "e2e/alpha", "outcome": "ok"},
        "fusion_upstream_duration_seconds_count": {"model": "e2e/judge"},
        "fusion_upstream_tokens_total": {"model": "e2e/beta", "kind": "completion"},
        "fusion_upstream_cost_usd_total": {"model": "e2e/gamma"},
        "fusion_cache_requests_total": {"result": "miss"},
        "fusion_agreement_count": {"panel": "trio"},
    }
    for name, labels in moved.items():
        assert metric(after, name, **labels) > metric(before, name, **labels), name
    assert "fusion_inflight_requests" in after


def test_request_log_lines(gateway: GatewayProcess, http: httpx.Client) -> None:
    """One JSON line per request with id, route, status, panel, cost and cache; no key anywhere."""
    request_id = f"log-{uuid.uuid4().hex[:8]}"
    ask(http, f"log me {uuid.uuid4().hex}", headers={"X-Request-Id": request_id})
    assert wait_until(lambda: request_id in gateway.output(), timeout_s=5)
    line = next(
        json.loads(text)
        for text in gateway.output().splitlines()
        if request_id in text and text.startswith("{")
    )
    assert line["event"] == "request"
    assert (line["route"], line["status"], line["panel"], line["cache"]) == (
        "/v1/chat/completions",
        200,
        "trio",
        "miss",
    )
    assert line["cost_usd"] > 0 and line["latency_ms"] > 0
    assert PROVIDER_KEY not in gateway.output()
    assert KEY not in gateway.output()


def test_a_streamed_fuse_logs_its_cost(gateway: GatewayProcess, http: httpx.Client) -> None:
    """Found in review: a streamed /fuse that missed the cache never recorded its result, so its
    log line had no cost, tokens or cache outcome (the chat stream had them)."""
    request_id = f"log-{uuid.uuid4().hex[:8]}"
    reply = http.post(
        "/fuse",
        json={"panel": "trio", "prompt": f"stream me {uuid.uuid4().hex}", "stream": True},
        headers={"X-Request-Id": request_id},
    )
    assert reply.status_code == 200 and "event: result" in reply.text
    assert wait_until(lambda: request_id in gateway.output(), timeout_s=5)
    line = next(
        json.loads(text)
        for text in gateway.output().splitlines()
        if request_id in text and text.startswith("{")
    )
    assert (line["route"], line["status"], line["panel"]) == ("/fuse", 200, "trio")
    assert line["cost_usd"] > 0 and line["tokens_in"] > 0
    assert line["cache"] in ("miss", "bypass")


# --- Redis going away --------------------------------------------------------------------------


def test_gateway_fails_open_when_redis_dies(upstream: FakeInThread, definitions: Path) -> None:
    """Redis stopped mid-test: fused requests still succeed, uncached, and the errors are counted."""
    with private_redis() as (redis, url):
        gateway = GatewayProcess(
            environment(upstream, definitions, FUSION_CACHE="redis", REDIS_URL=url)
        )
        try:
            with httpx.Client(
                base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
            ) as http:
                question = f"fail open {uuid.uuid4().hex}"
                assert ask(http, question).headers["x-fusion-cache"] == "miss"
                assert ask(http, question).headers["x-fusion-cache"] == "hit"
                redis.kill()
                redis.wait(5)
                after = ask(http, question)
                assert after.status_code == 200
                assert after.headers["x-fusion-cache"] == "miss"
                assert (
                    metric(http.get("/metrics").text, "fusion_cache_requests_total", result="error")
                    >= 1
                )
        finally:
            gateway.stop()


# --- several workers ---------------------------------------------------------------------------


def test_two_workers_metrics_add_up(upstream: FakeInThread, definitions: Path) -> None:
    """With two gunicorn workers, both serve requests and /metrics sums both, from either one."""
    upstream.fake.reset()
    gateway = GatewayProcess(environment(upstream, definitions, FUSION_CACHE="off"), workers=2)
    try:
        served_by: dict[int, int] = {}
        scraped_by: dict[int, str] = {}
        for attempt in range(60):
            # One connection at a time: /health names the worker, the next request on the same
            # keep-alive connection is served by that worker too.
            with httpx.Client(
                base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
            ) as http:
                pid = http.get("/health").json()["pid"]
                if attempt % 3 == 2:
                    scraped_by[pid] = http.get("/metrics").text
                else:
                    assert ask(http, f"worker {attempt}").status_code == 200
                    served_by[pid] = served_by.get(pid, 0) + 1
            if len(served_by) >= 2 and len(scraped_by) >= 2 and sum(served_by.values()) >= 10:
                break
        assert len(served_by) >= 2, f"only one worker served: {served_by}"
        assert len(scraped_by) >= 2, "could not scrape from both workers"
        total = sum(served_by.values())
        with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
            final = http.get("/metrics").text
        counted = metric(
            final, "fusion_requests_total", route="/v1/chat/completions", panel="trio", status="200"
        )
        assert counted == total
        assert (
            metric(final, "fusion_upstream_requests_total", model="e2e/alpha", outcome="ok")
            == total
        )
    finally:
        gateway.stop()
