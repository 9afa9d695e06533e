"""Two gateway replicas on one Redis: what one learns or counts, the other sees.

The compose stack of tests/test_compose.py with deploy/ci/docker-compose.scale.yml on top (a
per-key requests_per_minute and a cost ceiling, deploy/ci/gateway-scale.yaml) and
``--scale gateway=2``: each replica publishes an ephemeral port on 127.0.0.1, and the official
openai client talks to each by its own URL. The fake upstream answers every call after 200 ms,
so fusions are in flight when a replica is killed. Opt-in (the image must be built first):
``make compose-test``; see tests/compose_stack.py. The figures printed go to deploy/README.md.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml
from openai import APIStatusError, OpenAI, RateLimitError

from .compose_stack import (
    CI_OVERLAY,
    KEYS,
    SCALE_OVERLAY,
    ComposeStack,
    require_compose_stack,
    run,
)
from .helpers import ROOT

pytestmark = pytest.mark.docker

SCALE_CONFIG = yaml.safe_load((ROOT / "deploy" / "ci" / "gateway-scale.yaml").read_text())
BUDGET = yaml.safe_load((ROOT / "panels" / "budget.yaml").read_text())
UPSTREAM_DELAY_MS = 200
#: Fused requests of the kill run, and how many run at once.
LOAD_REQUESTS = 40
LOAD_CONCURRENCY = 8


class Replicas(ComposeStack):
    """The stack, with each gateway replica's container and host port (A first)."""

    containers_ab: list[str]
    ports: list[int]

    def client(self, replica: int, key: str, **options: Any) -> OpenAI:
        """The openai client of ``replica`` (0 = A, 1 = B) with the key named ``key``."""
        options.setdefault("max_retries", 0)
        return OpenAI(
            base_url=f"http://127.0.0.1:{self.ports[replica]}/v1",
            api_key=KEYS[key],
            timeout=60,
            **options,
        )


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    require_compose_stack()
    stack = Replicas(
        "compose-scale",
        [CI_OVERLAY, SCALE_OVERLAY],
        {
            # An empty host port: each replica gets an ephemeral one, on 127.0.0.1 only.
            "GATEWAY_PUBLISH": "127.0.0.1:",
            "PROMETHEUS_PUBLISH": "127.0.0.1:",
            "CI_UPSTREAM_DELAY_MS": str(UPSTREAM_DELAY_MS),
        },
    )
    try:
        started = time.monotonic()
        stack.up("--scale", "gateway=2")
        stack.containers_ab = stack.containers("gateway")
        assert len(stack.containers_ab) == 2
        stack.wait_healthy([*stack.containers_ab, stack.container("redis")])
        stack.ports = [stack.published("gateway", 8000, index) for index in (1, 2)]
        print(f"\ntwo replicas: up to healthy in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.down()


def ad_hoc(prefix: str) -> dict[str, Any]:
    """extra_body for an ad-hoc panel of two members and a judge, slugs under ``prefix``."""
    models = [f"{prefix}/one", f"{prefix}/two"]
    return {"fusion": {"models": models, "judge_model": f"{prefix}/judge"}}


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_a_cache_entry_written_through_a_is_a_hit_on_b(replicas: Replicas) -> None:
    """A seeded fusion through replica A is cached in Redis; the same request on B is a hit."""
    question = ask(f"Cached across replicas? ({time.time_ns()})")
    a, b = replicas.client(0, "cache"), replicas.client(1, "cache")
    first = a.chat.completions.with_raw_response.create(
        model="fusion/ci", messages=question, seed=3, extra_body=ad_hoc("ci-cache")
    )
    assert first.headers["x-fusion-cache"] == "miss"
    assert len(replicas.redis_keys("fusion:result:*")) >= 1
    calls = replicas.upstream_requests()
    took = time.monotonic()
    second = b.chat.completions.with_raw_response.create(
        model="fusion/ci", messages=question, seed=3, extra_body=ad_hoc("ci-cache")
    )
    took = time.monotonic() - took
    assert second.headers["x-fusion-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert replicas.upstream_requests() == calls  # served from Redis: no upstream call
    print(f"\ncache: written through A, hit on B in {took * 1000:.0f} ms")


def test_rate_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    """requests_per_minute + 6 requests, alternating A and B: exactly the limit is accepted."""
    limit: int = SCALE_CONFIG["rate_limit"]["requests_per_minute"]
    extra = 6
    # The windows are fixed minutes: start far enough from the next one to finish inside it.
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    window = int(time.time() // 60)
    clients = [replicas.client(0, "limit"), replicas.client(1, "limit")]
    outcomes: Counter[tuple[str, int]] = Counter()
    retry_afters: list[str | None] = []
    for index in range(limit + extra):
        replica = "AB"[index % 2]
        try:
            clients[index % 2].chat.completions.create(
                model="ci-limit/model", messages=ask(f"request {index}")
            )
            outcomes[replica, 200] += 1
        except RateLimitError as error:
            retry_afters.append(error.response.headers.get("retry-after"))
            outcomes[replica, 429] += 1
    assert int(time.time() // 60) == window, "the run crossed a minute window"
    accepted = outcomes["A", 200] + outcomes["B", 200]
    refused = outcomes["A", 429] + outcomes["B", 429]
    assert (accepted, refused) == (limit, extra), outcomes
    assert None not in retry_afters
    assert outcomes["A", 200] == outcomes["B", 200] == limit // 2, outcomes
    counted = replicas.exec("redis", "redis-cli", "GET", f"fusion:ratelimit:limit:{window}")
    assert int(counted) == limit + extra
    print(f"\nrate limit {limit}/min: {limit + extra} requests over A and B, {dict(outcomes)}")


def test_prices_learnt_through_a_are_used_by_b(replicas: Replicas) -> None:
    """Under the ceiling of $0.01, fusion/budget (its own estimate: $0.05) is refused by a replica
    that has no learnt prices. Its four models called through A (an ad-hoc panel, which has no
    estimate to refuse) put prices in Redis; B then takes them and lets fusion/budget through."""
    members = [member["slug"] for member in BUDGET["models"]]
    judge = BUDGET["judge_model"]
    a, b = replicas.client(0, "price"), replicas.client(1, "price")
    with pytest.raises(APIStatusError) as refused:
        b.chat.completions.create(model="fusion/budget", messages=ask("Too dear?"))
    assert refused.value.status_code == 402

    learnt = time.monotonic()
    a.chat.completions.create(
        model="fusion/ci",
        messages=ask("Learn these prices."),
        extra_body={"fusion": {"models": members, "judge_model": judge}},
    )
    # B never called these models: whatever it knows of them came from A through Redis.
    deadline = time.monotonic() + 40
    status = 402
    while time.monotonic() < deadline:
        try:
            b.chat.completions.create(model="fusion/budget", messages=ask("Now priced?"))
            status = 200
            break
        except APIStatusError as error:
            status = error.status_code
            if status != 402:
                raise
            time.sleep(2)
    shared_after = time.monotonic() - learnt
    assert status == 200, "B never used the prices A learnt"
    priced = {key.removeprefix("fusion:prices:") for key in replicas.redis_keys("fusion:prices:*")}
    assert {*members, judge} <= priced
    print(f"\nprices: learnt through A, used by B {shared_after:.1f} s later")


class RoundRobin(httpx.BaseTransport):
    """Send each attempt to the next replica in turn (a client-side load balancer), counting
    per replica the attempts answered, refused at connect, and cut off mid-request."""

    def __init__(self, ports: dict[int, str], tally: Counter[str], lock: threading.Lock) -> None:
        self._names = ports
        self._next = itertools.cycle(ports)
        self._inner = httpx.HTTPTransport()
        self._tally, self._lock = tally, lock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = next(self._next)
        replica = self._names[port]
        request.url = request.url.copy_with(port=port)
        try:
            response = self._inner.handle_request(request)
            response.read()
        except httpx.ConnectError:
            self._count(f"{replica} refused")
            raise
        except httpx.TransportError:
            self._count(f"{replica} cut off")
            raise
        self._count(f"{replica} answered")
        return response

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._tally[outcome] += 1

    def close(self) -> None:
        self._inner.close()


def test_killing_a_replica_mid_load_loses_no_request(replicas: Replicas) -> None:
    """40 fusions, 8 at a time, each client alternating A and B with openai's own retries on:
    B is killed (SIGKILL) a quarter of the way through, and every request still succeeds."""
    tally: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()
    load_keys = [f"load{n}" for n in range(1, 5)]
    done = threading.Semaphore(0)

    def fuse(index: int) -> str:
        if not hasattr(local, "client"):
            transport = RoundRobin(dict(zip(replicas.ports, "AB", strict=True)), tally, lock)
            local.clients = {
                key: OpenAI(
                    base_url=f"http://127.0.0.1:{replicas.ports[0]}/v1",
                    api_key=KEYS[key],
                    timeout=30,
                    max_retries=4,
                    http_client=httpx.Client(transport=transport),
                )
                for key in load_keys
            }
            local.client = True
        client = local.clients[load_keys[index % len(load_keys)]]
        try:
            reply = client.chat.completions.create(
                model="fusion/ci", messages=ask(f"Load {index}"), extra_body=ad_hoc("ci-load")
            )
            return reply.choices[0].message.content or ""
        finally:
            done.release()

    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        futures = [pool.submit(fuse, index) for index in range(LOAD_REQUESTS)]
        for _ in range(LOAD_REQUESTS // 4):
            done.acquire()
        killed_at = time.monotonic() - started
        run(["docker", "kill", replicas.containers_ab[1]])
        failures = []
        for future in futures:
            try:
                assert future.result()
            except Exception as error:  # counted and reported below
                failures.append(repr(error))
    took = time.monotonic() - started
    print(
        f"\nkill: {LOAD_REQUESTS} fusions, B killed at {killed_at:.1f} s, all done in "
        f"{took:.1f} s, {len(failures)} failed; attempts {dict(tally)}"
    )
    assert failures == []
    assert tally["B refused"] + tally["B cut off"] >= 1, "B was never found dead: killed too late"
