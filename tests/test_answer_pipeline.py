"""The answer pipeline every API shares, through a real `fusion serve`: keys as Anthropic's
clients send them, and errors in Anthropic's shape on the Messages API's paths."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .helpers import FakeInThread, GatewayProcess, gateway_env

KEY = "pipeline-key"
CHAT = {"model": "fusion/quick", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(upstream.fake, KEY))
    yield process
    process.stop()


def test_x_api_key_is_a_key_like_bearer(gateway: GatewayProcess) -> None:
    """Claude Code sends ANTHROPIC_API_KEY as ``x-api-key``: it admits like a bearer key, and a
    wrong one is refused the same way."""
    url = f"{gateway.base_url}/v1/chat/completions"
    accepted = httpx.post(url, json=CHAT, headers={"x-api-key": KEY}, timeout=30)
    assert accepted.status_code == 200, accepted.text
    refused = httpx.post(url, json=CHAT, headers={"x-api-key": "wrong"}, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"


def test_errors_under_v1_messages_take_anthropics_shape(gateway: GatewayProcess) -> None:
    """A path under /v1/messages answers errors as Anthropic's clients parse them, with the
    same status and retry advice; the other routes keep OpenAI's shape."""
    anthropic = httpx.post(
        f"{gateway.base_url}/v1/messages/no-such-thing", json={}, headers={"x-api-key": KEY}
    )
    assert anthropic.status_code == 404
    body = anthropic.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "/v1/messages/no-such-thing" in body["error"]["message"]
    assert anthropic.headers["x-should-retry"] == "false"
    openai_shaped = httpx.post(f"{gateway.base_url}/v1/no-such-thing", json={})
    assert openai_shaped.status_code == 404
    assert openai_shaped.json()["error"]["code"] == "not_found"
