"""The OpenAPI descriptions of server/openapi.py as plain data: msgspec's schemas inlined, and the
request schemas accept what the routes accept and refuse what they refuse."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from fusion_engine.config import LimitsSpec
from fusion_engine.results import FusionResult
from fusion_engine.server.openapi import (
    chat_request_schema,
    completion_schema,
    fuse_request_schema,
    schema_of,
)
from fusion_engine.server.schema import ChatRequest

LIMITS = LimitsSpec(max_messages=3, max_tools=2, max_members=2)
USER = {"role": "user", "content": "hi"}


def valid(schema: Any, instance: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


@pytest.mark.parametrize("kind", [ChatRequest, FusionResult])
def test_schemas_are_inlined(kind: type) -> None:
    """No $ref is left: Litestar rebuilds components/schemas and would drop our definitions."""
    assert '"$ref"' not in json.dumps(schema_of(kind))


def test_integers_carry_the_bounds_msgspec_decodes() -> None:
    """An integer past 64 bits decodes as a float, which an int field refuses: documented."""
    seed = schema_of(ChatRequest)["properties"]["seed"]  # type: ignore[index]
    integer = next(option for option in seed["anyOf"] if option.get("type") == "integer")
    assert (integer["minimum"], integer["maximum"]) == (-(2**63), 2**64 - 1)


def test_the_judge_may_be_skipped_in_a_fused_reply() -> None:
    """fusion.judge is a PanelResponse, a JudgeSkipped or null (msgspec cannot say so itself)."""
    fused = completion_schema()["anyOf"][0]  # type: ignore[index]
    judge = fused["properties"]["fusion"]["properties"]["judge"]["anyOf"]
    assert [option.get("title", option.get("type")) for option in judge] == [
        "PanelResponse", "JudgeSkipped", "null",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"model": "fusion/x", "messages": [USER]}, True),
        ({"model": "m", "messages": [USER], "anything": {"kept": True}}, True),
        ({"model": "m", "messages": []}, False),
        ({"model": "m", "messages": [USER] * 4}, False),  # over max_messages
        ({"model": "m", "messages": [{"role": "user"}]}, False),  # user content required
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, False),  # no call id
        ({"model": "m", "messages": [{"role": "assistant", "content": None}]}, True),
        ({"model": "m", "messages": [USER], "stream_options": {}}, False),  # needs stream
        ({"model": "m", "messages": [USER], "stream": True, "stream_options": {}}, True),
        ({"model": "m", "messages": [USER], "tools": [{}, {}, {}]}, False),  # over max_tools
        ({"model": "", "messages": [USER]}, False),
    ],
)
def test_chat_request_schema(body: dict[str, Any], accepted: bool) -> None:
    """The chat body's schema says what the route checks after decoding."""
    assert valid(chat_request_schema(LIMITS), body) is accepted


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"prompt": "q", "panel": "p"}, True),
        ({"messages": [USER], "models": ["a"], "judge_model": "j"}, True),
        ({"prompt": "q", "messages": [USER], "panel": "p"}, False),  # both
        ({"panel": "p"}, False),  # neither
        ({"prompt": " \t\x1c", "panel": "p"}, False),  # blank, as str.strip sees it
        ({"prompt": "q", "models": ["a"]}, False),  # an ad-hoc panel needs a judge
        ({"prompt": "q", "models": ["a"], "judge_model": "j", "panel": "p"}, False),
        ({"prompt": "q", "models": ["a", "b", "c"], "judge_model": "j"}, False),  # > max_members
        ({"prompt": "q", "models": [{"slug": "a", "top_p": 2}], "judge_model": "j"}, False),
        ({"prompt": "q", "models": [{"slug": "a", "provider": "zzz"}], "judge_model": "j"}, False),
        ({"prompt": "q", "models": [{"slug": "a", "provider": "local"}], "judge_model": "j"}, True),
        ({"prompt": "q", "panel": "p", "extra": 1}, False),  # FuseRequest forbids unknown fields
    ],
)
def test_fuse_request_schema(body: dict[str, Any], accepted: bool) -> None:
    """The /fuse body's schema: one of prompt/messages, one of panel/models (+ judge)."""
    assert valid(fuse_request_schema(LIMITS, ["openrouter", "local"]), body) is accepted
