"""Shared builders for tests: engines wired to the fake upstream, panels, a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fusion_engine import FusionEngine, Panel, PanelMember
from fusion_engine.settings import Settings
from fusion_engine.testing import FakeUpstream
from fusion_engine.timing import Clock, RetryPolicy
from fusion_engine.upstream import UpstreamClient

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.02)


def env_for(fake: FakeUpstream, **extra: str) -> dict[str, str]:
    """Environment pointing the default provider at the fake, with the repo's files."""
    return {
        "OPENROUTER_API_KEY": "test-key",
        "OPENROUTER_BASE_URL": fake.base_url,
        "FUSION_PANELS_DIR": str(ROOT / "panels"),
        "FUSION_JUDGES_DIR": str(ROOT / "judges"),
        "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
        **extra,
    }


def make_engine(
    fake: FakeUpstream,
    *,
    panels: Mapping[str, Panel] | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy = FAST_RETRY,
    env: Mapping[str, str] | None = None,
) -> FusionEngine:
    """A FusionEngine whose default provider is the fake upstream."""
    settings = Settings.from_environ(env if env is not None else env_for(fake))
    upstream = UpstreamClient(retry=retry, clock=clock)
    return FusionEngine(settings=settings, panels=panels, upstream=upstream, clock=clock)


def panel(*slugs: str | PanelMember, judge: str = "judge/model", **options: Any) -> Panel:
    """A panel of the given members (slugs or PanelMembers)."""
    members = [s if isinstance(s, PanelMember) else PanelMember(slug=s) for s in slugs]
    return Panel(name=options.pop("name", "test"), models=members, judge_model=judge, **options)


class ManualClock:
    """A clock that only moves when the test says so; sleeps wait for ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + seconds
        while self.now < wake_at:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()


async def eventually(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    # Polling: the state belongs to the fake server and the engine, which expose no events.
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
