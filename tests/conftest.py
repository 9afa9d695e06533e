from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fusion_engine.testing import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI/OpenRouter upstream on 127.0.0.1, fresh for each test."""
    async with FakeUpstream() as server:
        yield server
