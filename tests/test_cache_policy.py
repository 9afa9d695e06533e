"""Cache key coverage, cache policy and cache scope (issue 15, item 3).

The key is derived from the whole resolved panel struct (a test loops over every field), its
name, the template's text, the conversation, tools, parameters and a scope; ``cache: auto``
caches only deterministic requests. The ResultCache tests run against memory and real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from fusion_engine.cache import (
    SHARED_SCOPE,
    CacheBackend,
    CacheMaterial,
    MemoryCache,
    ProviderRef,
    RedisCache,
    ResultCache,
    cache_key,
    cache_material,
    cache_policy,
    deterministic,
    scope_for,
)
from fusion_engine.config import GatewayConfig, resolve_config
from fusion_engine.panels import EstimatedCost, Panel, PanelMember
from fusion_engine.plan import FusionPlan, make_plan
from fusion_engine.protocol import GenerationParams
from fusion_engine.redis_client import SharedRedis
from fusion_engine.results import FusionResult

from .helpers import REDIS_URL, require_redis

CONFIG = resolve_config(GatewayConfig(), {"OPENROUTER_API_KEY": "k"})
TEMPLATES = {"default": "Judge well.", "tool_synthesis": "Pick the next tool call."}
BASE_PANEL = Panel(
    name="base", models=[PanelMember(slug="a/one"), PanelMember(slug="b/two")], judge_model="j/j"
)
PROVIDER = ProviderRef("openrouter", "openrouter", "https://openrouter.ai/api/v1")
BASE = CacheMaterial(
    scope="caller",
    panel=BASE_PANEL,
    member_providers=[PROVIDER, PROVIDER],
    judge_provider=PROVIDER,
    template="Judge well.",
    web_search=False,
    conversation=[{"role": "user", "content": "q"}],
    params=GenerationParams(),
)

#: A different value for every field of Panel: the key must change with each.
PANEL_CHANGES: dict[str, Any] = {
    "schema_version": 2,
    "name": "ad-hoc",
    "description": "another description",
    "models": [PanelMember(slug="a/one")],
    "judge_model": "j/other",
    "judge_template": "creative",
    "judge_provider": "local",
    "estimated_cost_per_query": EstimatedCost(min=0.01, max=0.02),
    "member_timeout_s": 30.0,
    "deadline_s": 5.0,
    "min_responses": 2,
    "judge_temperature": 0.2,
    "judge_fallback_models": ["j/backup"],
    "judge_max_input_tokens": 4000,
    "skip_judge_if_single": True,
    "consensus_skip_judge": 0.5,
    "strategy": "cascade",
    "early_quorum": True,
    "tool_quorum": 2,
    "max_cost_usd": 0.5,
    "shuffle_answers": True,
    "web_search": True,
    "cache": "always",
    "provider_options": {"zdr": True},
}
#: A different value for every field of PanelMember.
MEMBER_CHANGES: dict[str, Any] = {
    "slug": "c/three",
    "max_tokens": 100,
    "temperature": 0.0,
    "top_p": 0.9,
    "seed": 7,
    "provider": "local",
}
#: And for the rest of the material.
MATERIAL_CHANGES: dict[str, Any] = {
    "scope": SHARED_SCOPE,
    "panel": msgspec.structs.replace(BASE_PANEL, name="other"),
    "member_providers": [PROVIDER, ProviderRef("local", "openai", "http://127.0.0.1:8080/v1")],
    "judge_provider": ProviderRef("local", "openai", "http://127.0.0.1:8080/v1"),
    "template": "Judge differently.",
    "web_search": True,
    "conversation": [{"role": "user", "content": "another question"}],
    "params": GenerationParams(tools=[{"type": "function", "function": {"name": "f"}}]),
}


def test_every_panel_field_changes_the_key() -> None:
    """Loop over every field of Panel: changing any one gives another key."""
    assert set(PANEL_CHANGES) == set(Panel.__struct_fields__), "list the new field here"
    base = cache_key(BASE)
    for field, value in PANEL_CHANGES.items():
        assert getattr(BASE_PANEL, field) != value, field
        changed = msgspec.structs.replace(BASE_PANEL, **{field: value})
        assert cache_key(msgspec.structs.replace(BASE, panel=changed)) != base, field


def test_every_member_field_changes_the_key() -> None:
    """Loop over every field of PanelMember (of the first member): each one counts."""
    assert set(MEMBER_CHANGES) == set(PanelMember.__struct_fields__), "list the new field here"
    base = cache_key(BASE)
    for field, value in MEMBER_CHANGES.items():
        member = msgspec.structs.replace(BASE_PANEL.models[0], **{field: value})
        changed = msgspec.structs.replace(BASE_PANEL, models=[member, *BASE_PANEL.models[1:]])
        assert cache_key(msgspec.structs.replace(BASE, panel=changed)) != base, field


def test_every_material_field_changes_the_key() -> None:
    """Scope, providers, template text, web search, conversation and parameters all count."""
    assert set(MATERIAL_CHANGES) == set(CacheMaterial.__struct_fields__)
    base = cache_key(BASE)
    for field, value in MATERIAL_CHANGES.items():
        assert cache_key(msgspec.structs.replace(BASE, **{field: value})) != base, field
    assert cache_key(msgspec.structs.replace(BASE)) == base


def test_the_key_never_holds_a_provider_key() -> None:
    """What is hashed names providers by name, kind and URL only."""
    config = resolve_config(GatewayConfig(), {"OPENROUTER_API_KEY": "sk-secret-provider-key"})
    plan = make_plan("q", panel=BASE_PANEL, panels={}, templates=TEMPLATES, config=config)
    assert b"sk-secret" not in msgspec.json.encode(cache_material(plan, "caller"))


def plan_for(
    *members: PanelMember,
    params: GenerationParams | None = None,
    question: str = "q",
    **options: Any,
) -> FusionPlan:
    panel = Panel(
        name=options.pop("name", "p"),
        models=list(members) or [PanelMember(slug="a/one"), PanelMember(slug="b/two")],
        judge_model="j/judge",
        **options,
    )
    return make_plan(
        question, panel=panel, panels={}, templates=TEMPLATES, config=CONFIG, params=params
    )


HOT, COLD = PanelMember(slug="a/one", temperature=1.0), PanelMember(slug="b/two", temperature=0)


@pytest.mark.parametrize(
    ("plan", "cached"),
    [
        pytest.param(plan_for(), False, id="provider default temperature"),
        pytest.param(plan_for(params=GenerationParams(temperature=1)), False, id="temperature 1"),
        pytest.param(plan_for(params=GenerationParams(temperature=0)), True, id="temperature 0"),
        pytest.param(plan_for(params=GenerationParams(seed=3)), True, id="request seed"),
        pytest.param(plan_for(COLD, COLD), True, id="members at 0"),
        pytest.param(
            plan_for(HOT, COLD, params=GenerationParams(temperature=0)), False,
            id="a member's own temperature beats the request's",
        ),
        pytest.param(
            plan_for(COLD, COLD, params=GenerationParams(temperature=1)), True,
            id="members at 0 beat a request at 1",
        ),
        pytest.param(
            plan_for(HOT, PanelMember(slug="b", seed=1), params=GenerationParams(seed=9)), True,
            id="seeded",
        ),
    ],
)  # fmt: skip
def test_auto_caches_only_deterministic_requests(plan: FusionPlan, cached: bool) -> None:
    """cache: auto reads and writes only when every member is at temperature 0 or seeded."""
    assert deterministic(plan) is cached
    assert cache_policy(plan, None) == (cached, cached)


def test_always_never_and_booleans() -> None:
    """always/true cache sampled and web-search answers; never/false never cache."""
    sampled = GenerationParams(temperature=1)
    for mode in ("always", True):
        assert cache_policy(plan_for(params=sampled, cache=mode), None) == (True, True)
        assert cache_policy(plan_for(cache=mode, web_search=True), None) == (True, True)
    for mode in ("never", False):
        assert cache_policy(plan_for(params=GenerationParams(seed=1), cache=mode), None) == (
            False, False,
        )  # fmt: skip
    seeded_search = plan_for(params=GenerationParams(seed=1), web_search=True)
    assert cache_policy(seeded_search, None) == (False, False)


def test_panel_cache_field_reads_booleans_and_names() -> None:
    """YAML true/false are always/never; anything else is refused."""
    for raw, mode in [(True, "always"), (False, "never"), ("auto", "auto"), ("never", "never")]:
        panel = msgspec.convert({**msgspec.to_builtins(BASE_PANEL), "cache": raw}, Panel)
        assert panel.cache_mode == mode
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**msgspec.to_builtins(BASE_PANEL), "cache": "yes"}, Panel)
    assert BASE_PANEL.cache_mode == "auto"


def test_scope_for() -> None:
    """cache_scope key: the caller's own identity; shared: one scope for all."""
    assert scope_for("abc123", "key") == "abc123"
    assert scope_for("abc123", "shared") == scope_for("other", "shared") == SHARED_SCOPE


# --- ResultCache against memory and real Redis -------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ResultCache]:
    backend: CacheBackend
    if request.param == "memory":
        backend = MemoryCache(max_bytes=1 << 20)
    else:
        require_redis()
        redis = SharedRedis.connect(REDIS_URL)
        backend = RedisCache(redis)
    results = ResultCache(backend, ttl_s=60)
    yield results
    await results.aclose()
    if request.param == "redis":
        await redis.aclose()


class Fusions:
    """Counts fusions and numbers their answers."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> FusionResult:
        self.count += 1
        return FusionResult(answer=f"answer {self.count}")


async def test_sampled_requests_bypass(cache: ResultCache) -> None:
    """Two identical temperature=1 requests on an auto panel both fuse: bypass, bypass."""
    plan = plan_for(params=GenerationParams(temperature=1), question=uuid.uuid4().hex)
    fuse = Fusions()
    outcomes = [(await cache.run(plan, fuse, scope="s"))[1] for _ in range(2)]
    assert outcomes == ["bypass", "bypass"] and fuse.count == 2


@pytest.mark.parametrize(
    "params", [GenerationParams(temperature=0), GenerationParams(seed=42)], ids=["t0", "seed"]
)
async def test_deterministic_requests_hit(cache: ResultCache, params: GenerationParams) -> None:
    """temperature 0 or a seed: miss, then hit."""
    plan = plan_for(params=params, question=uuid.uuid4().hex)
    fuse = Fusions()
    outcomes = [(await cache.run(plan, fuse, scope="s"))[1] for _ in range(2)]
    assert outcomes == ["miss", "hit"] and fuse.count == 1


@pytest.mark.parametrize(("mode", "expected"), [("always", "hit"), ("never", "bypass")])
async def test_always_and_never(cache: ResultCache, mode: str, expected: str) -> None:
    """always caches a sampled request; never does not cache a seeded one."""
    params = GenerationParams(temperature=1) if mode == "always" else GenerationParams(seed=1)
    plan = plan_for(params=params, question=uuid.uuid4().hex, cache=mode)
    fuse = Fusions()
    outcomes = [(await cache.run(plan, fuse, scope="s"))[1] for _ in range(2)]
    assert outcomes[1] == expected


async def test_scopes_keep_callers_apart(cache: ResultCache) -> None:
    """Another caller's scope never reads this caller's entry; the shared scope is shared."""
    plan = plan_for(params=GenerationParams(seed=1), question=uuid.uuid4().hex)
    fuse = Fusions()
    mine, _ = await cache.run(plan, fuse, scope="caller-a")
    theirs, outcome = await cache.run(plan, fuse, scope="caller-b")
    assert (outcome, theirs.answer) == ("miss", "answer 2") and mine.answer == "answer 1"
    await cache.run(plan, fuse, scope=SHARED_SCOPE)
    shared, outcome = await cache.run(plan, fuse, scope=scope_for("caller-c", "shared"))
    assert (outcome, shared.answer) == ("hit", "answer 3")


async def test_ad_hoc_never_serves_a_named_panels_request(cache: ResultCache) -> None:
    """The red team's case in one scope: an ad-hoc panel's entry is not a tool_quorum panel's."""
    question = uuid.uuid4().hex
    members = [{"slug": "a/one"}, {"slug": "b/two"}]
    seeded = GenerationParams(seed=1)
    ad_hoc = make_plan(
        question, panel=members, judge_model="j/judge", panels={}, templates=TEMPLATES,
        config=CONFIG, params=seeded,
    )  # fmt: skip
    named = plan_for(question=question, params=seeded, name="guarded", tool_quorum=2)
    fuse = Fusions()
    await cache.run(ad_hoc, fuse, scope=SHARED_SCOPE)
    served, outcome = await cache.run(named, fuse, scope=SHARED_SCOPE)
    assert (outcome, served.answer) == ("miss", "answer 2")
