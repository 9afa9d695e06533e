from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fusion_engine.testing import FakeUpstream

from .helpers import FakeInThread


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI/OpenRouter upstream on 127.0.0.1, fresh for each test."""
    async with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeInThread]:
    """A fake upstream in its own thread, shared by a module's tests against a gateway process."""
    threaded = FakeInThread()
    yield threaded
    threaded.close()
