"""The compose stack users run (docker-compose.yml), up for real, driven from the host.

The project's own docker-compose.yml with deploy/ci/docker-compose.ci.yml on top: that overlay
adds the project's fake upstream as a service (in the gateway image), gives the gateway keys,
and scrapes every 2 s; host ports are the test's free ones on 127.0.0.1 (GATEWAY_PUBLISH,
PROMETHEUS_PUBLISH). The official openai client talks to the container. Opt-in (the image must
be built first): ``make compose-test``; see tests/compose_stack.py.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from .compose_stack import CI_OVERLAY, KEYS, ComposeStack, docker_time, require_compose_stack
from .helpers import free_port

pytestmark = pytest.mark.docker

QUESTION = [{"role": "user", "content": "Name one prime number."}]
#: Container uid of the image (Dockerfile USER; the Kubernetes runAsUser).
FUSION_UID = 10001


class Stack(ComposeStack):
    """The stack of this module, with its published ports and the time it took to be healthy."""

    gateway_port: int
    prometheus_port: int
    start_to_healthy_s: float
    #: Right after ``up``: each service's container as inspected (its health log included).
    at_start: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_compose_stack()
    gateway_port, prometheus_port = free_port(), free_port()
    stack = Stack(
        "compose-test",
        [CI_OVERLAY],
        {
            "GATEWAY_PUBLISH": f"127.0.0.1:{gateway_port}",
            "PROMETHEUS_PUBLISH": f"127.0.0.1:{prometheus_port}",
        },
    )
    stack.gateway_port, stack.prometheus_port = gateway_port, prometheus_port
    try:
        started = time.monotonic()
        stack.up()
        services = ("redis", "upstream", "gateway", "prometheus")
        stack.at_start = {name: stack.inspect(stack.container(name)) for name in services}
        stack.wait_healthy([stack.container(name) for name in services])
        stack.start_to_healthy_s = time.monotonic() - started
        print(f"\ncompose stack: up to healthy in {stack.start_to_healthy_s:.1f} s")
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(
        base_url=f"http://127.0.0.1:{stack.gateway_port}/v1",
        api_key=KEYS["ci"],
        max_retries=0,
        timeout=60,
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def first_pass(container: dict[str, Any]) -> float:
    """When the container's first passing healthcheck ended (Unix seconds)."""
    passed = [p for p in container["State"]["Health"]["Log"] if p["ExitCode"] == 0]
    assert passed, f"{container['Name']} had not passed a healthcheck when its dependents started"
    return min(docker_time(p["End"]).timestamp() for p in passed)


def started(container: dict[str, Any]) -> float:
    return docker_time(container["State"]["StartedAt"]).timestamp()


def test_services_start_in_dependency_order(stack: Stack) -> None:
    """Redis and the upstream were healthy before the gateway started, and Prometheus started
    after the gateway (depends_on); all four end up healthy (or running, without a check)."""
    at = stack.at_start
    assert first_pass(at["redis"]) <= started(at["gateway"])
    assert first_pass(at["upstream"]) <= started(at["gateway"])
    assert started(at["gateway"]) <= started(at["prometheus"])
    for name in ("redis", "upstream", "gateway", "prometheus"):
        assert stack.health(stack.container(name)) in ("healthy", "running"), name
    health = get_json(f"http://127.0.0.1:{stack.gateway_port}/health")
    assert health["provider_key_configured"] is True
    # Prometheus has no healthcheck in the file: its own health endpoint answers.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.prometheus_port}/-/healthy") as reply:
        assert reply.status == 200


def test_gateway_runs_as_non_root_on_a_read_only_root(stack: Stack) -> None:
    """The gateway runs as uid 10001 on a read-only root filesystem; only its tmpfs mounts
    (/tmp, the metrics folder) take writes."""
    container = stack.container("gateway")
    info = stack.inspect(container)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"].split(":")[0] == str(FUSION_UID)
    assert stack.exec("gateway", "id", "-u").strip() == str(FUSION_UID)
    assert set(info["HostConfig"]["Tmpfs"]) == {"/tmp", "/tmp/prometheus"}
    probe = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(os.path.join(path, 'probe'), 'w').close()\n"
        "        print(path, 'writable')\n"
        "    except OSError as error:\n"
        "        print(path, error.strerror)\n"
    )
    found = stack.exec("gateway", "python", "-c", probe, "/", "/app", "/tmp", "/tmp/prometheus")
    assert found.splitlines() == [
        "/ Read-only file system",
        "/app Read-only file system",
        "/tmp writable",
        "/tmp/prometheus writable",
    ]
    # The workers keep their metric files in a folder of the server's own under the tmpfs.
    assert "fusion-metrics-" in stack.exec("gateway", "ls", "/tmp/prometheus")


def test_fused_completion_through_the_container(stack: Stack, client: OpenAI) -> None:
    """A fused completion: three members and a judge, each a call to the upstream service
    (which wants the provider key the overlay gave the gateway)."""
    before = stack.upstream_requests()
    reply = client.chat.completions.create(model="fusion/budget", messages=QUESTION)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert stack.upstream_requests() - before == 4


def test_streamed_completion_through_the_container(client: OpenAI) -> None:
    """A streamed fused completion arrives as chunks ending with a finish reason."""
    chunks = list(
        client.chat.completions.create(
            model="fusion/budget",
            messages=[{"role": "user", "content": "Stream one prime number."}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text
    assert finishes == ["stop"]


def test_second_deterministic_request_is_a_cache_hit_from_redis(
    stack: Stack, client: OpenAI
) -> None:
    """The same seeded request twice: a miss that writes Redis, then a hit that calls nothing."""
    question = [{"role": "user", "content": f"Cache me ({time.time_ns()})."}]
    before = stack.redis_keys("fusion:result:*")
    first = client.chat.completions.with_raw_response.create(
        model="fusion/budget",
        messages=question,
        seed=7,  # type: ignore[arg-type]
    )
    assert first.headers["x-fusion-cache"] == "miss"
    written = set(stack.redis_keys("fusion:result:*")) - set(before)
    assert len(written) == 1, written
    calls = stack.upstream_requests()
    second = client.chat.completions.with_raw_response.create(
        model="fusion/budget",
        messages=question,
        seed=7,  # type: ignore[arg-type]
    )
    assert second.headers["x-fusion-cache"] == "hit"
    assert stack.upstream_requests() == calls
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_prometheus_scrapes_the_gateway(stack: Stack, client: OpenAI) -> None:
    """Prometheus (its HTTP API on 127.0.0.1) has the gateway target up and fusion_requests_total
    scraped, counting the completions above."""
    client.chat.completions.create(model="fusion/budget", messages=QUESTION)  # type: ignore[arg-type]
    api = f"http://127.0.0.1:{stack.prometheus_port}/api/v1"
    deadline = time.monotonic() + 60
    targets: list[dict[str, Any]] = []
    total = 0.0
    while time.monotonic() < deadline:
        targets = get_json(f"{api}/targets")["data"]["activeTargets"]
        series = get_json(f"{api}/query?query=sum(fusion_requests_total)")["data"]["result"]
        total = float(series[0]["value"][1]) if series else 0.0
        if any(t["health"] == "up" for t in targets) and total >= 3:
            break
        time.sleep(1)
    (target,) = targets
    assert target["labels"]["job"] == "fusion-gateway"
    assert target["scrapeUrl"] == "http://gateway:8000/metrics"
    assert target["health"] == "up", target
    assert total >= 3


def test_gateway_healthcheck_is_healthy(stack: Stack) -> None:
    """Docker's own healthcheck of the gateway container passes (no failed probe since start)."""
    info = stack.inspect(stack.container("gateway"))
    health = info["State"]["Health"]
    assert health["Status"] == "healthy"
    assert health["FailingStreak"] == 0
    assert health["Log"][-1]["ExitCode"] == 0


def test_down_leaves_nothing_running(stack: Stack) -> None:
    """`docker-compose down -v` removes every container, network and volume of the project."""
    assert any(stack.leftovers().values())
    down = stack.down()
    assert down.returncode == 0, down.stderr
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
