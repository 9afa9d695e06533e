"""The passthrough provider's own models, as OpenAI model entries, kept a while per worker.

``provider_cards`` reads a provider's ``GET /models`` reply (OpenAI's list, or OpenRouter's
shape without ``object``/``owned_by``); ``ModelListCache`` keeps the last good list for
``MODEL_LIST_TTL_S`` and fetches it again only when asked after that. A failed fetch is not
kept: the next request tries again, and meanwhile ``/v1/models`` lists the panels alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

log = structlog.get_logger("fusion_engine.server")

#: How long a fetched list is used before it is fetched again.
MODEL_LIST_TTL_S = 600.0


class ModelCard(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/models``: OpenAI's model object."""

    id: str
    created: int
    owned_by: str = "fusion-engine"
    object: str = "model"


class ModelList(msgspec.Struct, frozen=True):
    """``GET /v1/models``: OpenAI's list shape."""

    data: list[ModelCard]
    object: str = "list"


def provider_cards(listing: Any, *, created: int) -> list[ModelCard]:
    """OpenAI model entries for a provider's ``/models`` reply.

    An entry without a string ``id`` is skipped; ``owned_by`` is the provider's own when it
    says, else the id's part before ``/`` (OpenRouter's ids), else the provider did not say.

    Args:
        created: used for entries without an integer ``created``.

    Raises:
        ValueError: the reply is not a list of models (no ``data`` list).
    """
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ValueError("the reply has no 'data' list")
    cards = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            continue
        model_id: str = entry["id"]
        owned_by = entry.get("owned_by")
        if not isinstance(owned_by, str):
            owned_by = model_id.split("/")[0] if "/" in model_id else "provider"
        stamp = entry.get("created")
        when = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else created
        cards.append(ModelCard(id=model_id, created=when, owned_by=owned_by))
    return cards


class ModelListCache:
    """The last good provider list, for ``ttl_s``; one fetch at a time (callers share it).

    Args:
        ttl_s: how long a fetched list is used.
        clock: monotonic seconds (tests inject their own).
    """

    def __init__(
        self, *, ttl_s: float = MODEL_LIST_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._cards: list[ModelCard] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> list[ModelCard] | None:
        if self._cards is not None and self._clock() - self._fetched_at < self.ttl_s:
            return self._cards
        return None

    async def get(self, fetch: Callable[[], Awaitable[list[ModelCard]]]) -> list[ModelCard]:
        """The kept list while fresh, else ``fetch``'s; ``[]`` when the fetch fails (logged,
        not kept)."""
        cards = self._fresh()
        if cards is not None:
            return cards
        async with self._lock:
            cards = self._fresh()  # another caller may have fetched it meanwhile
            if cards is not None:
                return cards
            try:
                cards = await fetch()
            except Exception as error:  # fail open: the panels are listed anyway
                log.warning("provider_models_failed", error=type(error).__name__)
                return []
            self._cards, self._fetched_at = cards, self._clock()
            return cards
