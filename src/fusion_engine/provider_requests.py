"""What a provider is sent: the JSON body and headers for its kind.

OpenRouter gets usage accounting and attribution headers; a plain OpenAI-compatible server
loses the body keys only OpenRouter understands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import Provider

#: Body keys only OpenRouter understands; never sent to a plain OpenAI-compatible server.
OPENROUTER_ONLY_KEYS = frozenset(
    {
        "models", "route", "provider", "plugins", "reasoning", "usage", "transforms", "top_k",
        "min_p", "top_a", "repetition_penalty", "session_id", "trace", "debug",
    }
)  # fmt: skip
APP_URL = "https://github.com/fusion-engine/fusion-engine"
APP_TITLE = "Fusion Engine"


def prepare_body(provider: Provider, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    """The JSON body for ``provider``: OpenRouter gets usage accounting, others lose its keys."""
    prepared = {key: value for key, value in body.items() if value is not None}
    prepared["stream"] = stream
    if provider.kind == "openrouter":
        prepared.setdefault("usage", {"include": True})
    else:
        for key in OPENROUTER_ONLY_KEYS.intersection(prepared):
            del prepared[key]
        if stream:
            prepared.setdefault("stream_options", {"include_usage": True})
    if not stream:
        prepared.pop("stream_options", None)
    return prepared


def request_headers(provider: Provider) -> dict[str, str]:
    """Auth and attribution headers.

    Raises:
        ProviderKeyMissingError: the provider needs a key that is not configured.
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = provider.require_key()
    if key is not None:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    if provider.kind == "openrouter":
        headers.update(
            {"HTTP-Referer": APP_URL, "X-OpenRouter-Title": APP_TITLE, "X-Title": APP_TITLE}
        )
    return headers
