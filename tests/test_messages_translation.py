"""The Anthropic Messages translation (``messages_api``), both directions, as plain units.

Replies and stream events are checked against the official ``anthropic`` SDK's own types (its
pydantic models), so a field Claude Code or the SDK needs cannot go missing unnoticed; every
request Claude Code was recorded sending translates without an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic.types as sdk
import msgspec
import pytest
from pydantic import TypeAdapter

from fusion_engine.chat_stream import ChatAnswer, StreamFailure, TokenUsage
from fusion_engine.errors import InvalidRequestError
from fusion_engine.messages_api import (
    MessageStreamRenderer,
    chat_body_of,
    count_tokens,
    error_body,
    message_of,
    stop_reason_of,
    tool_use_id,
)
from fusion_engine.protocol import FunctionCall, ToolCall, validate_messages

#: What Claude Code 2.1.332 sent (tests/fixtures/agent_recordings/README.md).
RECORDINGS = sorted(
    (Path(__file__).parent / "fixtures" / "agent_recordings").glob("claude_*/*.json")
)
STREAM_EVENT = TypeAdapter(sdk.RawMessageStreamEvent)
MESSAGE = TypeAdapter(sdk.Message)
WEATHER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "fusion/budget",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


# --- request → chat ------------------------------------------------------------------------------


def test_a_plain_request_becomes_the_chat_body_a_chat_client_would_send() -> None:
    body = chat_body_of(
        request(
            system="Be brief.",
            temperature=0.2,
            top_p=0.9,
            stop_sequences=["END"],
            metadata={"user_id": "u"},
        )
    )
    assert body == {
        "model": "fusion/budget",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 100,
        "stream": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
    }
    validate_messages(body["messages"])


def test_a_streamed_request_asks_for_usage() -> None:
    body = chat_body_of(request(stream=True))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_system_blocks_and_system_turns_fold_into_one_system_message() -> None:
    body = chat_body_of(
        request(
            system=[
                {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Two."},
            ],
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": "Env."},
                {"role": "system", "content": [{"type": "text", "text": "More env."}]},
                {"role": "assistant", "content": "Hello"},
            ],
        )
    )
    assert body["messages"] == [
        {"role": "system", "content": "One.\n\nTwo.\n\nEnv.\n\nMore env."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_text_blocks_join_into_a_string_and_images_make_parts() -> None:
    body = chat_body_of(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "b"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/jpeg",
                                "data": "QUJD",
                            },
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    ],
                },
            ]
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
    ]
    validate_messages(body["messages"])


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages_in_order() -> None:
    body = chat_body_of(
        request(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": ""},
                        {"type": "redacted_thinking", "data": "xx"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "P"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and hurry"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": "sunny",
                            "cache_control": {"type": "ephemeral"},
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "no city"}],
                            "is_error": True,
                        },
                    ],
                },
            ]
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city":"P"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no city"},
        {"role": "user", "content": "and hurry"},
    ]
    validate_messages(body["messages"])


def test_tool_references_and_images_in_tool_results() -> None:
    body = chat_body_of(
        request(
            messages=[
                {"role": "user", "content": "find"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {"type": "tool_reference", "tool_name": "WebFetch"},
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://x/shot.png"},
                                },
                            ],
                        }
                    ],
                },
            ]
        )
    )
    assistant, tool, user = body["messages"][1:]
    assert assistant["content"] is None
    assert tool["role"] == "tool"
    assert "WebFetch" in tool["content"]
    assert "image" in tool["content"]
    assert user == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x/shot.png"}}],
    }
    validate_messages(body["messages"])


def test_turns_of_nothing_usable_stay_turns() -> None:
    body = chat_body_of(
        request(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]},
                {"role": "user", "content": [{"type": "future_block"}, {"type": ["odd"]}]},
            ]
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ]


def test_tools_and_tool_choice_in_chat_form() -> None:
    tools = [
        {"name": "w", "description": "Weather", "input_schema": WEATHER_SCHEMA},
        {"name": "Late", "input_schema": {"type": "object"}, "defer_loading": True},
        {"type": "custom", "name": "c", "cache_control": {"type": "ephemeral"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    body = chat_body_of(request(tools=tools, tool_choice={"type": "any"}))
    schema = {key: value for key, value in WEATHER_SCHEMA.items() if key != "$schema"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": schema, "description": "Weather"},
        },
        {"type": "function", "function": {"name": "Late", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {"name": "c", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert body["tool_choice"] == "required"
    assert "fusion" not in body
    assert "parallel_tool_calls" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "w"}},
                "parallel_tool_calls": False,
            },
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = chat_body_of(request(tools=[{"name": "w", "input_schema": {}}], tool_choice=choice))
    assert {key: body[key] for key in expected} == expected


def test_an_empty_tool_list_sends_no_tools() -> None:
    """Claude Code's title request sends ``tools: []`` (and ``output_config.format``)."""
    body = chat_body_of(
        request(
            tools=[],
            tool_choice={"type": "auto"},
            output_config={"format": {"type": "json_schema", "schema": {"title": "t"}}},
        )
    )
    assert set(body) == {"model", "messages", "max_tokens", "stream"}


def test_web_search_turns_on_fusions_search_for_panels_only() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    fused = chat_body_of(request(tools=[search, {"name": "w", "input_schema": {}}]))
    assert fused["fusion"] == {"web_search": True}
    assert [tool["function"]["name"] for tool in fused["tools"]] == ["w"]
    alone = chat_body_of(request(tools=[search], tool_choice={"type": "auto"}))
    assert alone["fusion"] == {"web_search": True}
    assert "tools" not in alone
    assert "tool_choice" not in alone
    passed = chat_body_of(request(model="openai/gpt-4o", tools=[search]))
    assert "fusion" not in passed


def test_fields_the_gateway_does_not_use_are_dropped_not_refused() -> None:
    body = chat_body_of(
        request(
            thinking={"type": "adaptive", "display": "omitted"},
            context_management={"edits": [{"type": "clear_thinking_20251015"}]},
            output_config={"effort": "high", "format": {"type": "json_schema", "schema": {}}},
            safeguards=[{"type": "dangerous_tool_use"}],
            cache_control={"type": "ephemeral"},
            top_k=5,
            service_tier="auto",
            betas=["x"],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {"type": "document", "source": {"type": "text", "data": "d"}},
                        {"type": "search_result", "source": "s", "title": "t", "content": []},
                        {"type": "future_block", "whatever": 1},
                    ],
                }
            ],
        )
    )
    assert set(body) == {"model", "messages", "max_tokens", "stream"}
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fusion/x", "messages": [{"role": "user", "content": "a"}]}, "max_tokens"),
        (request(max_tokens=0), "max_tokens"),
        (request(max_tokens="many"), "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "a"}]}, "model"),
        (request(messages=[]), "messages"),
        (request(messages="hi"), "messages"),
        (request(messages=[{"role": "system", "content": "only this"}]), "messages"),
        (request(messages=[{"role": "robot", "content": "a"}]), "messages[0].role"),
        (request(messages=[{"role": "user"}]), "messages[0].content"),
        (request(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]"),
        (
            request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
        ),
        (
            request(
                messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "w"}]}]
            ),
            "messages[0].content[0].id",
        ),
        (
            request(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "id": "f"}}],
                    }
                ]
            ),
            "messages[0].content[0].source.type",
        ),
        (
            request(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "a"},
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "text"}],
                            },
                        ],
                    }
                ]
            ),
            "messages[0].content[1].content[0].text",
        ),
        (request(tools=[{"description": "nameless"}]), "tools[0].name"),
        (request(tools=[{"name": "w"}], tool_choice={"type": "tool"}), "tool_choice.name"),
        (request(tools=[{"name": "w"}], tool_choice={"type": "sometimes"}), "tool_choice.type"),
        (request(stop_sequences="END"), "stop_sequences"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat_body_of(body)
    assert caught.value.param == param
    assert caught.value.status_code == 400


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recorded_claude_code_request_translates(path: Path) -> None:
    recorded = json.loads(path.read_text())["body"]
    body = chat_body_of(recorded)
    validate_messages(body["messages"])
    roles = [message["role"] for message in body["messages"]]
    assert roles[0] == "system"
    assert roles.count("system") == 1  # the mid-conversation system turn folded in
    assert "Environment" in body["messages"][0]["content"]
    assert len(body["tools"]) == len(recorded["tools"])  # deferred tools included
    assert set(body) <= {"model", "messages", "max_tokens", "stream", "stream_options", "tools"}
    if "tool" in roles:
        assistant = body["messages"][roles.index("tool") - 1]
        assert (
            assistant["tool_calls"][0]["id"]
            == body["messages"][roles.index("tool")]["tool_call_id"]
        )
    assert count_tokens(recorded) > 1000


def test_recordings_are_there() -> None:
    assert len(RECORDINGS) >= 11


def test_count_tokens_estimates_from_characters() -> None:
    short = count_tokens({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    long = count_tokens(
        {
            "model": "m",
            "system": "x" * 3500,
            "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "w", "input_schema": WEATHER_SCHEMA}],
        }
    )
    assert 1 <= short < 20
    assert 1000 < long - short < 1100


def test_count_tokens_ignores_what_does_not_count() -> None:
    """Sampling and output fields are not part of count_tokens' request (its schema leaves them
    out): whatever they hold, the count is the conversation's. Schemathesis found a 400 here."""
    plain = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    odd = {
        key: {"a": 1} for key in ("max_tokens", "stop_sequences", "temperature", "top_p", "stream")
    }
    assert count_tokens({**plain, **odd}) == count_tokens(plain)


# --- answers → message ---------------------------------------------------------------------------


def answer_with(**fields: Any) -> ChatAnswer:
    return ChatAnswer(**fields)


def call(call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def as_message(answer: ChatAnswer, model: str = "fusion/budget") -> dict[str, Any]:
    encoded: dict[str, Any] = msgspec.to_builtins(
        message_of(answer, model=model, message_id="msg_1")
    )
    MESSAGE.validate_python(encoded)
    return encoded


def test_a_text_answer_is_a_message() -> None:
    usage = TokenUsage(input_tokens=12, output_tokens=3, cost_usd=0.002)
    fusion = {"panel": "budget", "members": []}
    message = as_message(
        answer_with(text="Paris.", finish_reason="stop", usage=usage, fusion=fusion)
    )
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "fusion/budget",
        "content": [{"type": "text", "text": "Paris."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3, "cost": 0.002},
        "fusion": fusion,
    }


def test_a_passed_through_answer_has_no_fusion_and_unknown_cost_is_left_out() -> None:
    message = as_message(
        answer_with(text="x", finish_reason="length", usage=TokenUsage(input_tokens=1)),
        model="openai/gpt-4o",
    )
    assert "fusion" not in message
    assert message["usage"] == {"input_tokens": 1, "output_tokens": 0}
    assert message["stop_reason"] == "max_tokens"
    assert message["model"] == "openai/gpt-4o"


def test_tool_calls_become_tool_use_blocks_keeping_their_ids() -> None:
    message = as_message(
        answer_with(
            text="Let me check.",
            tool_calls=[call("call_abc", "w", '{"city": "Paris"}'), call("", "w", "")],
            finish_reason="tool_calls",
        )
    )
    text, first, second = message["content"]
    assert text == {"type": "text", "text": "Let me check."}
    assert first == {"type": "tool_use", "id": "call_abc", "name": "w", "input": {"city": "Paris"}}
    assert second["input"] == {}
    assert second["id"].startswith("toolu_")
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_unparsable_tool_arguments_become_an_empty_input_and_a_note() -> None:
    message = as_message(
        answer_with(tool_calls=[call("c1", "w", '{"city": '), call("c2", "v", "[1]")])
    )
    note, first, second = message["content"]
    assert first["input"] == {} and second["input"] == {}
    assert "w call" in note["text"] and "v call" in note["text"]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish_reason", "called", "expected"),
    [
        ("stop", False, "end_turn"),
        (None, False, "end_turn"),
        ("stop", True, "tool_use"),
        ("tool_calls", False, "tool_use"),
        ("length", True, "max_tokens"),
        ("content_filter", False, "refusal"),
    ],
)
def test_stop_reasons(finish_reason: str | None, called: bool, expected: str) -> None:
    assert stop_reason_of(finish_reason, called) == expected


def test_tool_use_ids_keep_to_anthropics_alphabet() -> None:
    assert tool_use_id("call_1-A") == "call_1-A"
    assert tool_use_id("functions.Bash:0") == "functions_Bash_0"
    assert tool_use_id(None).startswith("toolu_")
    assert tool_use_id(None) != tool_use_id(None)


def test_error_bodies_have_anthropics_shape() -> None:
    assert error_body(429, "slow down") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert error_body(413, "big")["error"]["type"] == "request_too_large"
    assert error_body(504, "late")["error"]["type"] == "api_error"
    assert error_body(422, "odd")["error"]["type"] == "invalid_request_error"


# --- streams -------------------------------------------------------------------------------------


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of every event, checking each has both lines."""
    events = []
    for chunk in data.decode().split("\n\n"):
        if not chunk:
            continue
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name_line.removeprefix("event: ")
        events.append((payload["type"], payload))
    assert data.endswith(b"\n\n") or not data
    return events


def validated(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = parse_sse(data)
    for name, payload in events:
        if name not in ("ping", "error"):
            STREAM_EVENT.validate_python(payload)
    return events


def fold(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a client assembles from the events, checking the block discipline."""
    message: dict[str, Any] = {}
    open_blocks: set[int] = set()
    inputs: dict[int, str] = {}
    for name, payload in events:
        if name == "message_start":
            message = payload["message"]
        elif name == "content_block_start":
            assert payload["index"] == len(message["content"])
            message["content"].append(payload["content_block"])
            open_blocks.add(payload["index"])
        elif name == "content_block_delta":
            assert payload["index"] in open_blocks
            block = message["content"][payload["index"]]
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                inputs[payload["index"]] = inputs.get(payload["index"], "") + delta["partial_json"]
        elif name == "content_block_stop":
            open_blocks.remove(payload["index"])
            if payload["index"] in inputs:
                message["content"][payload["index"]]["input"] = json.loads(inputs[payload["index"]])
        elif name == "message_delta":
            message.update(payload["delta"])
            message["usage"].update(payload["usage"])
            if "fusion" in payload:
                message["fusion"] = payload["fusion"]
    assert not open_blocks, "every block is closed"
    MESSAGE.validate_python(message)
    return message


def test_a_text_stream() -> None:
    renderer = MessageStreamRenderer(model="fusion/budget", message_id="msg_9", input_tokens=40)
    fusion = {"panel": "budget"}
    data = b"".join(
        [
            renderer.open(),
            renderer.progress(1, 3),
            renderer.keepalive(),
            renderer.text("Par"),
            renderer.text(""),
            renderer.text("is."),
            renderer.finish("stop", fusion),
            renderer.usage(TokenUsage(input_tokens=50, output_tokens=2, cost_usd=0.01)),
            renderer.close(),
        ]
    )
    events = validated(data)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_9" and start["model"] == "fusion/budget"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 40, "output_tokens": 0}
    assert events[3][1]["content_block"] == {"type": "text", "text": ""}
    delta = events[7][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 50, "output_tokens": 2, "cost": 0.01}
    assert delta["fusion"] == fusion
    message = fold(events)
    assert message["content"] == [{"type": "text", "text": "Paris."}]
    assert message["stop_reason"] == "end_turn"


def test_a_stream_with_text_and_two_tool_calls() -> None:
    renderer = MessageStreamRenderer(model="openai/gpt-4o", message_id="msg_t")
    data = b"".join(
        [
            renderer.open(),
            renderer.text("Checking."),
            renderer.tool_call(0, "call_1", "w", ""),
            renderer.tool_call(0, None, None, '{"city":'),
            renderer.tool_call(0, None, None, ' "Paris"}'),
            renderer.tool_call(1, "call_2", "w", '{"city": "Rome"}'),
            renderer.finish("tool_calls"),
            renderer.close(),
        ]
    )
    events = validated(data)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[4][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "w",
        "input": {},
    }
    assert events[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":'}
    message = fold(events)
    assert [block["type"] for block in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1]["input"] == {"city": "Paris"}
    assert message["content"][2] == {
        "type": "tool_use",
        "id": "call_2",
        "name": "w",
        "input": {"city": "Rome"},
    }
    assert message["stop_reason"] == "tool_use"
    assert "fusion" not in events[-2][1]
    assert events[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_text_after_a_tool_call_opens_a_new_block() -> None:
    renderer = MessageStreamRenderer(model="m", message_id="msg_x")
    data = b"".join(
        [
            renderer.open(),
            renderer.tool_call(0, None, "w", "{}"),
            renderer.text("done"),
            renderer.close(),
        ]
    )
    message = fold(validated(data))
    assert [block["type"] for block in message["content"]] == ["tool_use", "text"]
    assert message["content"][0]["id"].startswith("toolu_")
    assert message["stop_reason"] == "tool_use"  # no finish reason: the tool call decides


def test_an_empty_stream_is_still_a_whole_message() -> None:
    renderer = MessageStreamRenderer(model="m", message_id="msg_e")
    events = validated(renderer.open() + renderer.close())
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert fold(events)["content"] == []


def test_a_failure_is_an_error_event_in_anthropics_shape() -> None:
    renderer = MessageStreamRenderer(model="m", message_id="msg_f")
    data = (
        renderer.open()
        + renderer.text("partial")
        + renderer.fail(
            StreamFailure(status=502, message="every member failed", type="server_error")
        )
    )
    events = validated(data)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "every member failed"}},
    )
    overloaded = renderer.fail(StreamFailure(status=529, message="busy", type="overloaded"))
    assert parse_sse(overloaded)[0][1]["error"]["type"] == "overloaded_error"


def test_ping_is_anthropics_ping() -> None:
    renderer = MessageStreamRenderer(model="m", message_id="msg_p")
    assert parse_sse(renderer.keepalive()) == [("ping", {"type": "ping"})]
