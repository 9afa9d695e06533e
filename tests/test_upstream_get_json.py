"""UpstreamClient.get_json, the one read besides chat (the eval harness asks a gateway for a
panel with it): JSON on 200, and every failure an UpstreamError, never aiohttp's own."""

from __future__ import annotations

import pytest

from fusion_engine.config import Provider
from fusion_engine.errors import UpstreamError
from fusion_engine.testing import FakeUpstream
from fusion_engine.upstream import UpstreamClient

from .helpers import free_port


def provider(base_url: str) -> Provider:
    return Provider(name="fake", kind="openai", base_url=base_url, api_key=None, api_key_env=None)


async def test_get_json_reads_a_json_reply(fake: FakeUpstream) -> None:
    """200: the decoded body."""
    client = UpstreamClient()
    try:
        listing = await client.get_json(provider(fake.base_url), "/models", timeout_s=5)
    finally:
        await client.aclose()
    assert isinstance(listing, dict) and isinstance(listing["data"], list)


async def test_get_json_failures_are_upstream_errors(fake: FakeUpstream) -> None:
    """Another status carries it; a closed port is a connection error."""
    client = UpstreamClient()
    try:
        with pytest.raises(UpstreamError) as missing:
            await client.get_json(provider(fake.base_url), "/nowhere", timeout_s=5)
        assert missing.value.status == 404
        closed = provider(f"http://127.0.0.1:{free_port()}/v1")
        with pytest.raises(UpstreamError) as refused:
            await client.get_json(closed, "/models", timeout_s=5)
        assert refused.value.kind == "connection"
    finally:
        await client.aclose()
