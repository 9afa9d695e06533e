"""UpstreamClient.get_json, the one read besides chat (the eval harness asks a gateway for a
panel with it): JSON on 200, and every failure an UpstreamError, never aiohttp's own; and
UpstreamClient.post, the one write besides chat (embeddings)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fusion_engine.config import Provider
from fusion_engine.errors import UpstreamError
from fusion_engine.testing import FakeUpstream, Reply
from fusion_engine.timing import RetryPolicy
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


async def test_post_relays_the_reply_and_retries_like_chat(fake: FakeUpstream) -> None:
    """UpstreamClient.post (embeddings): the provider's bytes as sent, after a retried 503; a
    200 that is not a JSON object and a 400 are UpstreamErrors (the 400 keeps its fields)."""
    client = UpstreamClient(retry=RetryPolicy(base_s=0.01, cap_s=0.02))
    target = provider(fake.base_url)
    body = {"model": "vendor/embed", "input": "hello", "encoding_format": "float"}
    try:
        fake.script("vendor/embed", Reply(status=503), Reply())
        raw = await client.post(target, "/embeddings", body, timeout_s=5)
        assert raw.startswith(b'{"object":"list"')
        assert len(fake.requests_for("vendor/embed")) == 2
        fake.script("vendor/text", Reply(body="not json"))
        with pytest.raises(UpstreamError) as malformed:
            await client.post(target, "/embeddings", {**body, "model": "vendor/text"}, timeout_s=5)
        assert malformed.value.kind == "invalid_response"
        error = {"message": "bad", "type": "invalid_request_error", "param": "input", "code": "x"}
        fake.script("vendor/bad", Reply(status=400, body={"error": error}))
        with pytest.raises(UpstreamError) as refused:
            await client.post(target, "/embeddings", {**body, "model": "vendor/bad"}, timeout_s=5)
        assert refused.value.status == 400
        assert refused.value.provider_error is not None
        assert refused.value.provider_error.param == "input"
    finally:
        await client.aclose()


async def test_get_json_reads_no_more_than_an_answers_bound() -> None:
    """A listing over 8 MiB is an UpstreamError, not a body held whole in memory (found in the
    review of the change: get_json read the whole body)."""
    huge = b'{"data": ["' + b"x" * (9 * 1024 * 1024) + b'"]}'

    async def listing(request: web.Request) -> web.Response:
        return web.Response(body=huge, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", listing)
    client = UpstreamClient()
    try:
        async with TestServer(app, host="127.0.0.1") as server:
            with pytest.raises(UpstreamError, match="over 8 MiB") as raised:
                await client.get_json(provider(str(server.make_url("/v1"))), "/models", timeout_s=5)
        assert raised.value.kind == "invalid_response"
    finally:
        await client.aclose()
