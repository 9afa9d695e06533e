"""Admission: the one gate of every route that spends money (auth and key names, list limits,
rate limits, the concurrent-fusion slot held for a fusion's whole life), and the keyless
loopback mode's guard against web pages (JSON bodies only, loopback Host only)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from fusion_engine.errors import ConfigError
from fusion_engine.server.admission import host_is_loopback, is_json
from fusion_engine.settings import Settings
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)

MEMBERS = ("e2e/alpha", "e2e/beta", "e2e/gamma")
USER = [{"role": "user", "content": "What is the capital of France?"}]


# --- key names (settings) --------------------------------------------------------------------


def test_keys_get_names() -> None:
    """Entries are ``key`` or ``name:key``; unnamed keys are key1, key2... in order."""
    settings = Settings.from_environ(
        {"FUSION_SERVER_API_KEYS": "first, team-a:second,third,team-a:fourth:with:colons"}
    )
    named = [(key.name, key.secret.reveal()) for key in settings.server_api_keys]
    assert named == [
        ("key1", "first"),
        ("team-a", "second"),
        ("key2", "third"),
        ("team-a", "fourth:with:colons"),
    ]
    single = Settings.from_environ({"FUSION_SERVER_API_KEY": "ops:only-key"}).server_api_keys
    assert [(key.name, key.secret.reveal()) for key in single] == [("ops", "only-key")]


def test_a_bad_key_name_is_refused_without_showing_the_key() -> None:
    """A name outside [a-z0-9_-]{1,32} fails at start, naming the variable, not the key."""
    with pytest.raises(ConfigError, match="FUSION_SERVER_API_KEYS") as raised:
        Settings.from_environ({"FUSION_SERVER_API_KEYS": "Team A:secret-value"})
    assert "secret-value" not in str(raised.value)


def test_key_repr_hides_the_secret() -> None:
    """A named key's repr shows its name, never the key."""
    settings = Settings.from_environ({"FUSION_SERVER_API_KEYS": "ops:hidden-key-value"})
    assert "hidden-key-value" not in repr(settings)


# --- the keyless guard (pure parts) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("LOCALHOST:8000", True),
        ("127.0.0.1", True),
        ("127.8.9.10:1234", True),
        ("[::1]", True),
        ("[::1]:8000", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1:8000", False),
        ("[::2]:80", False),
        ("", False),
        (None, False),
        ("localhost:notaport", False),
    ],
)
def test_loopback_hosts(host: str | None, allowed: bool) -> None:
    """Only loopback names and addresses, with any port, count as loopback."""
    assert host_is_loopback(host) is allowed


@pytest.mark.parametrize(
    ("content_type", "allowed"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("text/plain", False),
        ("text/plain;charset=UTF-8", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/jsonp", False),
        (None, False),
    ],
)
def test_json_content_types(content_type: str | None, allowed: bool) -> None:
    """Only application/json (any parameters) is a JSON body."""
    assert is_json(content_type) is allowed


# --- through a real gateway ------------------------------------------------------------------

LIMITS = "limits: {max_body_bytes: 8388608, max_messages: 20, max_tools: 4, max_members: 16}\n"


def write_config(directory: Path, extra: str) -> Path:
    config = directory / "gateway.yaml"
    config.write_text((ROOT / "tests" / "e2e_files" / "gateway.yaml").read_text() + extra)
    return config


@pytest.fixture(scope="module")
def slot_gateway(
    upstream: FakeInThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Keys configured, one concurrent fusion per key, lists limited (20 messages, 4 tools)."""
    config = write_config(
        tmp_path_factory.mktemp("slots"), LIMITS + "rate_limit: {concurrent_fusions: 1}\n"
    )
    process = GatewayProcess(gateway_env(upstream.fake, "big-key,streamer-key", config=config))
    yield process
    process.stop()


def fuse_body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"messages": messages, "panel": "trio", **extra}


@pytest.mark.parametrize("route", ["/fuse", "/v1/chat/completions"])
def test_too_many_messages_are_refused_on_every_route(
    slot_gateway: GatewayProcess, fake: FakeUpstream, route: str
) -> None:
    """20,000 messages is a 413 naming ``messages`` on /fuse as on chat; nothing is forwarded."""
    messages = [{"role": "user", "content": "x"}] * 20_000
    body = (
        fuse_body(messages) if route == "/fuse" else {"model": "fusion/trio", "messages": messages}
    )
    reply = httpx.post(
        slot_gateway.base_url + route, json=body, timeout=30,
        headers={"Authorization": "Bearer big-key"},
    )  # fmt: skip
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["param"] == "messages"
    assert fake.received == []


def test_too_many_tools_are_refused_on_fuse(
    slot_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """Five tools over a limit of four is a 413 naming ``tools`` on /fuse."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    reply = httpx.post(
        slot_gateway.base_url + "/fuse", json=fuse_body(USER, tools=[tool] * 5), timeout=30,
        headers={"Authorization": "Bearer big-key"},
    )  # fmt: skip
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["param"] == "tools"
    assert fake.received == []


def _slow_members(fake: FakeUpstream, delay_s: float) -> None:
    for slug in MEMBERS:
        fake.script(slug, Reply(text="slow", delay_s=delay_s))


def test_streamed_fuse_holds_a_fusion_slot_until_it_ends(
    slot_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """While a streamed /fuse runs, a second fusion of that key is a 429; after it ends,
    and after a client walks away mid-stream, the slot is free again."""
    _slow_members(fake, 1.5)
    headers = {"Authorization": "Bearer streamer-key"}
    url = slot_gateway.base_url + "/fuse"
    with httpx.Client(timeout=30, headers=headers) as client:
        events: list[str] = []

        def first_stream() -> None:
            with client.stream("POST", url, json=fuse_body(USER, stream=True)) as reply:
                events.append(str(reply.status_code))
                events.extend(reply.iter_lines())

        runner = threading.Thread(target=first_stream)
        runner.start()
        assert wait_until(lambda: len(fake.received) >= 3, timeout_s=10)
        second = httpx.post(url, json=fuse_body(USER, stream=True), headers=headers, timeout=30)
        third = httpx.post(url, json=fuse_body(USER), headers=headers, timeout=30)
        runner.join(30)
    assert events[0] == "200" and "event: result" in events
    assert second.status_code == 429, second.text
    assert second.headers["retry-after"]
    assert "at once" in second.json()["error"]["message"]
    assert third.status_code == 429
    # The stream ended: the slot is back.
    fake.reset()
    assert httpx.post(url, json=fuse_body(USER), headers=headers, timeout=30).status_code == 200
    # A client that leaves mid-stream gives its slot back too.
    _slow_members(fake, 5.0)
    with (
        httpx.Client(timeout=30, headers=headers) as client,
        client.stream("POST", url, json=fuse_body(USER, stream=True)) as reply,
    ):
        assert reply.status_code == 200
        assert wait_until(lambda: len(fake.received) >= 3, timeout_s=10)
    fake.reset()

    def slot_is_free() -> bool:
        return httpx.post(url, json=fuse_body(USER), headers=headers, timeout=30).status_code == 200

    assert wait_until(slot_is_free, timeout_s=10)


def test_streamed_chat_holds_a_fusion_slot(
    slot_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """The same slot rule on streamed chat completions (one admission path)."""
    _slow_members(fake, 1.5)
    client = OpenAI(
        base_url=f"{slot_gateway.base_url}/v1", api_key="streamer-key", max_retries=0, timeout=30
    )
    stream = client.chat.completions.create(model="fusion/trio", messages=USER, stream=True)  # type: ignore[arg-type]
    try:
        assert wait_until(lambda: len(fake.received) >= 3, timeout_s=10)
        second = httpx.post(
            slot_gateway.base_url + "/fuse", json=fuse_body(USER), timeout=30,
            headers={"Authorization": "Bearer streamer-key"},
        )  # fmt: skip
        assert second.status_code == 429
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text
    finally:
        stream.close()


@pytest.fixture(scope="module")
def named_gateway(
    upstream: FakeInThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Two rotated keys share the name ``team``; ``solo`` has its own; 2 requests a minute."""
    config = write_config(
        tmp_path_factory.mktemp("named"), LIMITS + "rate_limit: {requests_per_minute: 2}\n"
    )
    keys = "team:team-old-key,team:team-new-key,solo:solo-key"
    process = GatewayProcess(gateway_env(upstream.fake, keys, config=config))
    yield process
    process.stop()


def test_rate_limits_are_per_key_name(named_gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """Two keys with one name share its requests per minute; another name does not."""

    def post(key: str) -> int:
        return httpx.post(
            named_gateway.base_url + "/fuse", json=fuse_body(USER), timeout=30,
            headers={"Authorization": f"Bearer {key}"},
        ).status_code  # fmt: skip

    statuses = [post("team-old-key"), post("team-new-key")]
    if 429 in statuses:  # a minute boundary fell inside the burst: the window restarted
        statuses = [post("team-old-key"), post("team-new-key")]
    assert statuses == [200, 200]
    assert post("team-old-key") == 429
    assert post("team-new-key") == 429
    assert post("solo-key") == 200


# --- keyless loopback mode -------------------------------------------------------------------

ROUTE_BODIES = {
    "/v1/chat/completions": b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "hi"}]}',
    "/fuse": b'{"panel": "trio", "prompt": "hi"}',
}


@pytest.fixture(scope="module")
def keyless_gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    """No keys, bound to 127.0.0.1."""
    process = GatewayProcess(gateway_env(upstream.fake, ""))
    yield process
    process.stop()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/fuse"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_keyless_mode_refuses_cross_site_bodies(
    keyless_gateway: GatewayProcess, fake: FakeUpstream, route: str, content_type: str
) -> None:
    """A form or text/plain POST (what a web page can send without asking) runs no fusion: 415."""
    body = ROUTE_BODIES[route]
    reply = httpx.post(
        keyless_gateway.base_url + route, content=body, headers={"Content-Type": content_type}
    )
    assert reply.status_code == 415, reply.text
    assert reply.json()["error"]["code"] == "unsupported_media_type"
    assert fake.received == []


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "/v1/chat/completions"), ("POST", "/fuse"), ("GET", "/v1/models")],
)
def test_keyless_mode_refuses_foreign_hosts(
    keyless_gateway: GatewayProcess, fake: FakeUpstream, method: str, route: str
) -> None:
    """A request naming another Host (a DNS-rebinding page) is refused with 421."""
    reply = httpx.request(
        method, keyless_gateway.base_url + route, content=ROUTE_BODIES.get(route),
        headers={"Host": "evil.example", "Content-Type": "application/json"},
    )  # fmt: skip
    assert reply.status_code == 421, reply.text
    assert reply.json()["error"]["code"] == "host_not_allowed"
    assert fake.received == []


def test_keyless_mode_serves_the_openai_client(
    keyless_gateway: GatewayProcess, fake: FakeUpstream
) -> None:
    """The official client (JSON, Host 127.0.0.1 or localhost) is served as before."""
    for host in ("127.0.0.1", "localhost"):
        client = OpenAI(
            base_url=f"http://{host}:{keyless_gateway.port}/v1", api_key="unused",
            max_retries=0, timeout=30,
        )  # fmt: skip
        reply = client.chat.completions.create(model="fusion/trio", messages=USER)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
    fused = httpx.post(keyless_gateway.base_url + "/fuse", json=fuse_body(USER), timeout=30)
    assert fused.status_code == 200


def test_keyed_mode_is_unchanged(slot_gateway: GatewayProcess, fake: FakeUpstream) -> None:
    """With keys configured, the Host and content type are not checked (the key is)."""
    reply = httpx.post(
        slot_gateway.base_url + "/fuse",
        content=b'{"panel": "trio", "prompt": "hi"}',
        headers={
            "Authorization": "Bearer big-key",
            "Content-Type": "text/plain",
            "Host": "gateway.example",
        },
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
