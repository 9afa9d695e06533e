"""Model ids in plain units: the ``fusion-<panel>`` alias, reading a provider's model list, and
the 10-minute list cache on an injected clock."""

from __future__ import annotations

import pytest

from fusion_engine.plan import panel_of_model
from fusion_engine.server.model_list import (
    MODEL_LIST_TTL_S,
    ModelCard,
    ModelListCache,
    provider_cards,
)


@pytest.mark.parametrize(
    ("model", "panel"),
    [
        ("fusion/budget", "budget"),
        ("fusion-budget", "budget"),
        ("fusion-multi-word", "multi-word"),
        ("fusion/", ""),
        ("openai/gpt-4o", None),
        ("fusionbudget", None),
        ("Fusion/budget", None),
        ("vendor/fusion-budget", None),
    ],
)
def test_panel_of_model(model: str, panel: str | None) -> None:
    """``fusion/<panel>`` and ``fusion-<panel>`` name a panel; any other id is passed through."""
    assert panel_of_model(model) == panel


def test_provider_cards_reads_openai_and_openrouter_shapes() -> None:
    """OpenAI entries keep their owner and date; OpenRouter's (no owner) are owned by the id's
    part before ``/``; entries without an id are skipped."""
    openai_shape = {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 5, "owned_by": "system"}],
    }
    assert provider_cards(openai_shape, created=1) == [
        ModelCard(id="gpt-4o", created=5, owned_by="system")
    ]
    openrouter_shape = {
        "data": [{"id": "vendor/m", "name": "M", "pricing": {}}, {"name": "no id"}, "junk"],
        "links": {"next": None},
    }
    assert provider_cards(openrouter_shape, created=7) == [
        ModelCard(id="vendor/m", created=7, owned_by="vendor")
    ]


@pytest.mark.parametrize("listing", [None, [], {"data": "x"}, {"models": []}, "text"])
def test_provider_cards_refuses_what_is_not_a_list(listing: object) -> None:
    with pytest.raises(ValueError, match="data"):
        provider_cards(listing, created=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_keeps_a_list_ten_minutes() -> None:
    """One fetch serves every call for 10 minutes; after that the list is fetched again."""
    clock = Clock()
    cache = ModelListCache(clock=clock)
    fetched: list[int] = []

    async def fetch() -> list[ModelCard]:
        fetched.append(1)
        return [ModelCard(id=f"m{len(fetched)}", created=0)]

    assert [c.id for c in await cache.get(fetch)] == ["m1"]
    clock.now += MODEL_LIST_TTL_S - 1
    assert [c.id for c in await cache.get(fetch)] == ["m1"]
    assert MODEL_LIST_TTL_S == 600
    clock.now += 1
    assert [c.id for c in await cache.get(fetch)] == ["m2"]
    assert len(fetched) == 2


async def test_cache_failure_gives_nothing_and_is_not_kept() -> None:
    """A failed fetch lists nothing (no error) and the next call tries again."""
    cache = ModelListCache(clock=Clock())
    calls = 0

    async def flaky() -> list[ModelCard]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("provider down")
        return [ModelCard(id="back", created=0)]

    assert await cache.get(flaky) == []
    assert [c.id for c in await cache.get(flaky)] == ["back"]
    assert calls == 2
