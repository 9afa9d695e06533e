"""The cache through a real `fusion serve`: the red team's cross-key, cross-panel case, the
auto policy, always/never, and cache_scope key vs shared — on the memory and the Redis backend
(issue 15, item 3)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion_engine.testing import FakeToolCall, FakeUpstream, Reply

from .helpers import (
    REDIS_URL,
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    require_redis,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
)

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
ALPHA, BETA, JUDGE = "e2e/alpha", "e2e/beta", "e2e/judge"
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("delete_repo", "get_weather")
]
DELETE = FakeToolCall("delete_repo", '{"repo": "prod"}')
WEATHER = FakeToolCall("get_weather", '{"city": "Paris"}')
PANELS = {
    "guarded": "tool_quorum: 2\n",
    "open": "",
    "always": "cache: always\n",
    "never": "cache: never\n",
}


@pytest.fixture(scope="module")
def definitions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Panels of two fake members (one with tool_quorum: 2), and one config per cache_scope."""
    root = tmp_path_factory.mktemp("cache-e2e")
    (root / "panels").mkdir()
    for name, extra in PANELS.items():
        (root / "panels" / f"{name}.yaml").write_text(
            f"schema_version: 1\nname: {name}\nmodels:\n  - slug: {ALPHA}\n  - slug: {BETA}\n"
            f"judge_model: {JUDGE}\nmember_timeout_s: 3\n{extra}"
        )
    base = (ROOT / "tests" / "e2e_files" / "gateway.yaml").read_text()
    for scope in ("key", "shared"):
        (root / f"gateway-{scope}.yaml").write_text(base + f"\ncache_scope: {scope}\n")
    shutil.copytree(ROOT / "judges", root / "judges")
    return root


@pytest.fixture(
    scope="module",
    params=[("memory", "key"), ("redis", "key"), ("redis", "shared")],
    ids=["memory-key", "redis-key", "redis-shared"],
)
def gateway(
    request: pytest.FixtureRequest, upstream: FakeInThread, definitions: Path
) -> Iterator[tuple[GatewayProcess, str]]:
    backend, scope = request.param
    extra = {"FUSION_CACHE": backend}
    if backend == "redis":
        require_redis()
        extra["REDIS_URL"] = REDIS_URL
    env = gateway_env(
        upstream.fake, f"{KEY_A},{KEY_B}", panels=definitions / "panels",
        judges=definitions / "judges", config=definitions / f"gateway-{scope}.yaml", **extra,
    )  # fmt: skip
    process = GatewayProcess(env)
    yield process, scope
    process.stop()


def chat(
    gateway: tuple[GatewayProcess, str], key: str, panel: str, question: str, **extra: Any
) -> httpx.Response:
    body = {
        "model": f"fusion/{panel}",
        "messages": [{"role": "user", "content": question}],
        **extra,
    }
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(
        f"{gateway[0].base_url}/v1/chat/completions", json=body, headers=headers, timeout=30
    )


def tool_names(reply: httpx.Response) -> list[str]:
    message = reply.json()["choices"][0]["message"]
    return [call["function"]["name"] for call in message.get("tool_calls") or []]


def test_ad_hoc_entry_never_serves_a_tool_quorum_panel(
    gateway: tuple[GatewayProcess, str], fake: FakeUpstream
) -> None:
    """The red team's case: key A's ad-hoc request (no quorum) gets delete_repo from the judge
    and fills the cache; key B then asks the tool_quorum: 2 panel with the same members, judge,
    conversation and tools — it must fuse afresh, and its quorum refuses the lone call."""
    fake.script(ALPHA, Reply(tool_calls=[DELETE]))
    fake.script(BETA, Reply(tool_calls=[WEATHER]))
    fake.script(JUDGE, Reply(tool_calls=[DELETE]), Reply(text="Which repository do you mean?"))
    question = f"clean up {uuid.uuid4().hex}"
    ad_hoc = {"models": [ALPHA, BETA], "judge_model": JUDGE}
    first = chat(gateway, KEY_A, "guarded", question, tools=TOOLS, temperature=0, fusion=ad_hoc)
    assert first.status_code == 200, first.text
    assert tool_names(first) == ["delete_repo"]
    assert first.headers["x-fusion-cache"] == "miss"
    for key in (KEY_B, KEY_A):  # another caller, and the same caller: neither is served it
        second = chat(gateway, key, "guarded", question, tools=TOOLS, temperature=0)
        assert second.status_code == 200, second.text
        assert "delete_repo" not in tool_names(second)
        assert second.json()["choices"][0]["message"]["content"] == "Which repository do you mean?"
    # Fused for A's ad-hoc panel, then for B's guarded one, then (scope key) for A's own.
    assert len(fake.requests_for(ALPHA)) == (3 if gateway[1] == "key" else 2)


def test_sampled_requests_are_not_cached(
    gateway: tuple[GatewayProcess, str], fake: FakeUpstream
) -> None:
    """Two identical temperature=1 requests on an auto panel both go upstream (bypass),
    streamed or not."""
    question = f"a poem {uuid.uuid4().hex}"
    replies = [chat(gateway, KEY_A, "open", question, temperature=1) for _ in range(2)]
    assert [reply.headers["x-fusion-cache"] for reply in replies] == ["bypass", "bypass"]
    streamed = chat(gateway, KEY_A, "open", question, temperature=1, stream=True)
    assert streamed.headers["x-fusion-cache"] == "bypass"
    assert len(fake.requests_for(ALPHA)) == 3
    unsaid = chat(gateway, KEY_A, "open", question)  # provider default temperature: sampled
    assert unsaid.headers["x-fusion-cache"] == "bypass"


@pytest.mark.parametrize("knob", [{"temperature": 0}, {"seed": 11}], ids=["t0", "seed"])
def test_deterministic_requests_hit(
    gateway: tuple[GatewayProcess, str], fake: FakeUpstream, knob: dict[str, Any]
) -> None:
    """temperature 0 or a seed: miss, then hit for the same caller."""
    question = f"capital {uuid.uuid4().hex}"
    replies = [chat(gateway, KEY_A, "open", question, **knob) for _ in range(2)]
    assert [reply.headers["x-fusion-cache"] for reply in replies] == ["miss", "hit"]
    assert replies[1].json()["fusion"]["cached"] is True
    assert len(fake.requests_for(ALPHA)) == 1


def test_always_and_never(gateway: tuple[GatewayProcess, str], fake: FakeUpstream) -> None:
    """cache: always caches a sampled request; cache: never does not cache a seeded one."""
    question = f"policy {uuid.uuid4().hex}"
    always = [chat(gateway, KEY_A, "always", question, temperature=1) for _ in range(2)]
    assert [reply.headers["x-fusion-cache"] for reply in always] == ["miss", "hit"]
    never = [chat(gateway, KEY_A, "never", question, seed=1) for _ in range(2)]
    assert [reply.headers["x-fusion-cache"] for reply in never] == ["bypass", "bypass"]


def test_scope_key_keeps_callers_apart(
    gateway: tuple[GatewayProcess, str], fake: FakeUpstream
) -> None:
    """cache_scope key: another key's identical request fuses again; shared: it is a hit."""
    scope = gateway[1]
    question = f"scope {uuid.uuid4().hex}"
    assert chat(gateway, KEY_A, "open", question, seed=5).headers["x-fusion-cache"] == "miss"
    other = chat(gateway, KEY_B, "open", question, seed=5)
    assert other.headers["x-fusion-cache"] == ("miss" if scope == "key" else "hit")
    assert chat(gateway, KEY_B, "open", question, seed=5).headers["x-fusion-cache"] == "hit"
