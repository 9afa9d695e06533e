"""The Responses API translation, both ways: every input item, part and tool type to the
chat-completions body, and answers to ``response`` objects and SSE events — each checked
against the official openai-python types, and every recorded Codex / Agents SDK request
replayed through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from fusion_engine.chat_stream import ChatAnswer, StreamFailure, TokenUsage
from fusion_engine.errors import InvalidRequestError
from fusion_engine.protocol import FunctionCall, ToolCall, validate_messages
from fusion_engine.responses_api import (
    ResponseContext,
    ResponsesStream,
    Translation,
    assistant_message,
    parse_request,
    translate,
)

#: Request bodies Codex CLI 0.171.0 and the Agents SDK 0.24.0 sent to a recording server (with
#: headers masked and long strings trimmed).
RECORDINGS = Path(__file__).parent / "fixtures" / "agent_recordings"
RECORDED = sorted(RECORDINGS.glob("*/*POST_v1_responses.json"))
_events = TypeAdapter(ResponseStreamEvent)


def chat_of(**request: Any) -> Translation:
    request.setdefault("model", "fusion/acc")
    return translate(parse_request(request))


def error_of(**request: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as raised:
        chat_of(**request)
    return raised.value


# --- input ----------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    body = chat_of(input="hello").chat_body
    assert body == {"model": "fusion/acc", "messages": [{"role": "user", "content": "hello"}]}


def test_instructions_come_first_as_a_system_message_and_are_not_stored() -> None:
    translation = chat_of(input="hi", instructions="Be brief.")
    assert translation.chat_body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert translation.conversation == [{"role": "user", "content": "hi"}]


def test_message_items_of_every_role_and_text_part() -> None:
    items = [
        {"type": "message", "role": "system", "content": "sys", "id": "msg_1"},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "a"},
                                                             {"type": "input_text", "text": "b"}]},
        {"role": "user", "content": "question"},  # the Agents SDK leaves out "type"
        {"type": "message", "role": "assistant", "status": "completed", "id": "msg_2",
         "content": [{"type": "output_text", "text": "answer", "annotations": []},
                     {"type": "refusal", "refusal": "no"}]},
    ]  # fmt: skip
    messages = chat_of(input=items).chat_body["messages"]
    assert messages == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "a\nb"},  # developer is the system role upstream
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "answer\nno"},
    ]
    validate_messages(messages)


def test_input_images_become_image_url_parts() -> None:
    item = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        ],
    }
    [message] = chat_of(input=[item]).chat_body["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
            },
        ],
    }


def test_an_uploaded_file_image_is_refused_naming_the_part() -> None:
    item = {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}
    error = error_of(input=[item])
    assert error.param == "input[0].content[0].image_url"


def test_function_calls_join_the_assistant_message_and_outputs_become_tool_messages() -> None:
    items = [
        {"role": "user", "content": "weather?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "noon"}]},
    ]  # fmt: skip
    messages = chat_of(input=items).chat_body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Let me see.",
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }  # fmt: skip
    assert messages[2] == {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}
    # Text parts become a string: every chat upstream takes that in a tool message.
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_b",
        "content": "noon",
    }
    validate_messages(messages)


def test_a_function_call_without_a_message_before_it_opens_an_assistant_message() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]
    assert chat_of(input=items).chat_body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def test_reasoning_items_are_dropped_and_their_encrypted_content_never_forwarded() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}],
         "content": None, "encrypted_content": "U0VDUkVULUJMT0I="},
    ]  # fmt: skip
    translation = chat_of(input=items)
    assert translation.chat_body["messages"] == [{"role": "user", "content": "go"}]
    assert b"U0VDUkVULUJMT0I" not in msgspec.json.encode(translation.chat_body)
    assert b"hmm" not in msgspec.json.encode(translation.chat_body)


def test_a_namespaced_function_call_in_the_history_is_flattened() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c", "namespace": "multi", "name": "spawn", "arguments": "{}"},
    ]  # fmt: skip
    calls = chat_of(input=items).chat_body["messages"][1]["tool_calls"]
    assert calls[0]["function"]["name"] == "multi__spawn"


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": ["text"]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": 3}]}, "tools[0].parameters"),
        ({"input": "x", "tools": [{"type": "namespace", "tools": []}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "always"}, "tool_choice"),
        ({"input": "x", "tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "function", "name": "g"}}, "tool_choice.name"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": [{"role": "assistant", "content": [
            {"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input[0].content"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_responses_field(
    request_fields: dict[str, Any], param: str
) -> None:
    assert error_of(**request_fields).param == param


def test_a_missing_model_names_model() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_request({"input": "x"})
    assert raised.value.param == "model"


# --- tools and options ---------------------------------------------------------------------


CODEX_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "exec_command", "description": "Run", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "agents",
     "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
               {"type": "custom", "name": "free"}]},
    {"type": "web_search", "external_web_access": False},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "image_generation"},
]  # fmt: skip


def test_function_and_namespace_tools_become_chat_functions() -> None:
    translation = chat_of(
        input="x", tools=CODEX_TOOLS, tool_choice="auto", parallel_tool_calls=True
    )
    body = translation.chat_body
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "exec_command", "description": "Run", "strict": False,
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}},
        {"type": "function", "function": {
            "name": "multi_agent_v1__spawn_agent", "parameters": {"type": "object"}}},
    ]  # fmt: skip
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert translation.ignored_tools == ["custom", "file_search", "image_generation"]
    assert "fusion" not in body  # external_web_access: false means no web search
    assert translation.context.namespaced == {
        "multi_agent_v1__spawn_agent": ("multi_agent_v1", "spawn_agent")
    }


def test_ignored_tool_types_are_named_only_when_fit_for_a_header() -> None:
    tools = [{"type": "evil\r\nX-Injected: 1"}, {"type": "caf\u00e9"}, {"type": 3}, {}]
    assert chat_of(input="x", tools=tools).ignored_tools == ["unknown"] * 4


def test_a_function_without_parameters_gets_an_empty_object_schema() -> None:
    [tool] = chat_of(input="x", tools=[{"type": "function", "name": "ping"}]).chat_body["tools"]
    assert tool["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tool", "on"),
    [
        ({"type": "web_search"}, True),
        ({"type": "web_search", "external_web_access": True}, True),
        ({"type": "web_search_preview"}, True),
        ({"type": "web_search", "external_web_access": False}, False),
    ],
)
def test_web_search_maps_to_the_fusion_option(tool: dict[str, Any], on: bool) -> None:
    body = chat_of(input="x", tools=[tool]).chat_body
    assert body.get("fusion") == ({"web_search": True} if on else None)
    assert "tools" not in body


def test_the_clients_own_fusion_options_travel_and_win() -> None:
    body = chat_of(
        input="x", tools=[{"type": "web_search"}], fusion={"web_search": False, "detail": "none"}
    ).chat_body
    assert body["fusion"] == {"web_search": False, "detail": "none"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        ({"type": "function", "name": "spawn", "namespace": "ns"},
         {"type": "function", "function": {"name": "ns__spawn"}}),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
        ({"type": "web_search_preview"}, None),
    ],
)  # fmt: skip
def test_tool_choice_forms(choice: Any, expected: Any) -> None:
    tools = [
        {"type": "function", "name": "f"},
        {"type": "namespace", "name": "ns", "description": "", "tools": [
            {"type": "function", "name": "spawn"}]},
    ]  # fmt: skip
    body = chat_of(input="x", tools=tools, tool_choice=choice).chat_body
    assert body.get("tool_choice") == expected


def test_no_tools_means_no_tool_choice_nor_parallel_tool_calls() -> None:
    # Codex's compaction turn: tools [] with parallel_tool_calls false.
    body = chat_of(input="x", tools=[], tool_choice="auto", parallel_tool_calls=False).chat_body
    assert set(body) == {"model", "messages"}


def test_colliding_flat_names_are_refused() -> None:
    tools = [
        {"type": "function", "name": "ns__f"},
        {"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "function", "name": "f"}]},
    ]  # fmt: skip
    assert error_of(input="x", tools=tools).param == "tools"


def test_generation_fields_and_text_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = chat_of(
        input="x", max_output_tokens=50, temperature=0.2, top_p=0.9, user="u1",
        text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True},
              "verbosity": "low"},
    ).chat_body  # fmt: skip
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["user"] == "u1"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    assert chat_of(input="x", text={"format": {"type": "json_object"}}).chat_body[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in chat_of(input="x", text={"format": {"type": "text"}}).chat_body


def test_responses_only_fields_are_accepted_and_not_forwarded() -> None:
    body = chat_of(
        input="x", metadata={"k": "v"}, include=["reasoning.encrypted_content"],
        reasoning={"summary": "auto"}, store=False, prompt_cache_key="p",
        client_metadata={"session_id": "s"}, previous_response_id=None, truncation="auto",
        service_tier="auto",
    ).chat_body  # fmt: skip
    assert set(body) == {"model", "messages"}


def test_streaming_asks_for_usage() -> None:
    body = chat_of(input="x", stream=True).chat_body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_history_comes_after_the_instructions_and_before_the_input() -> None:
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"}]
    translation = translate(
        parse_request({"model": "m", "input": "two", "instructions": "count"}), history=history
    )
    assert [m["content"] for m in translation.chat_body["messages"]] == ["count", "one", "1", "two"]
    assert translation.conversation == [*history, {"role": "user", "content": "two"}]


# --- the response object --------------------------------------------------------------------


def context(**request: Any) -> ResponseContext:
    request.setdefault("model", "fusion-acc")
    request.setdefault("input", "x")
    return translate(parse_request(request)).context


def response_json(context: ResponseContext, answer: ChatAnswer) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(context.response_of(answer))
    Response.model_validate(body)
    return body


def test_a_text_answer_is_a_completed_response_with_one_message() -> None:
    ctx = context(instructions="be kind", temperature=0.5, metadata={"a": "b"}, store=False)
    usage = TokenUsage(input_tokens=10, output_tokens=5, cost_usd=0.002)
    body = response_json(ctx, ChatAnswer(text="Hello", finish_reason="stop", usage=usage,
                                         fusion={"panel": "acc"}))  # fmt: skip
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] == "completed" and body["model"] == "fusion-acc"
    [message] = body["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Hello", "annotations": []}]
    assert body["usage"]["input_tokens"] == 10 and body["usage"]["output_tokens"] == 5
    assert body["usage"]["total_tokens"] == 15 and body["usage"]["cost"] == 0.002
    assert body["fusion"] == {"panel": "acc"}
    assert body["error"] is None and body["incomplete_details"] is None
    assert body["instructions"] == "be kind" and body["temperature"] == 0.5
    assert body["metadata"] == {"a": "b"} and body["store"] is False
    assert body["text"] == {"format": {"type": "text"}} and body["tool_choice"] == "auto"
    assert "output_text" not in body


def test_a_passed_through_answer_has_no_fusion_and_unknown_cost_is_left_out() -> None:
    body = response_json(
        context(), ChatAnswer(text="x", usage=TokenUsage(input_tokens=1, output_tokens=1))
    )
    assert "fusion" not in body and "cost" not in body["usage"]


def test_tool_calls_become_function_call_items_namespaced_ones_in_namespaced_form() -> None:
    ctx = context(tools=CODEX_TOOLS)
    calls = [
        ToolCall(id="call_1", function=FunctionCall(name="exec_command", arguments='{"cmd":"ls"}')),
        ToolCall(id="call_2", function=FunctionCall(name="multi_agent_v1__spawn_agent", arguments="{}")),
    ]  # fmt: skip
    body = response_json(ctx, ChatAnswer(tool_calls=calls, finish_reason="tool_calls"))
    first, second = body["output"]
    assert first == {"type": "function_call", "id": first["id"], "call_id": "call_1",
                     "name": "exec_command", "arguments": '{"cmd":"ls"}', "status": "completed"}  # fmt: skip
    assert first["id"].startswith("fc_")
    assert second["name"] == "spawn_agent" and second["namespace"] == "multi_agent_v1"
    assert body["tools"] == CODEX_TOOLS  # echoed as sent


def test_a_length_stop_is_incomplete() -> None:
    body = response_json(
        context(max_output_tokens=5), ChatAnswer(text="cut", finish_reason="length")
    )
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["max_output_tokens"] == 5


def test_the_stored_assistant_message_is_chat_form() -> None:
    call = ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))
    assert assistant_message(ChatAnswer(text=None, tool_calls=[call])) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{}"}, "type": "function"}
        ],
    }


# --- streaming ------------------------------------------------------------------------------


def events_of(stream: bytes) -> list[dict[str, Any]]:
    """Every event of a stream, each validated as openai-python's event type; the ``event:``
    line must name the same type."""
    events = []
    for block in stream.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        kind_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert kind_line == f"event: {data['type']}"
        _events.validate_python(data)
        events.append(data)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def test_a_streamed_text_and_tool_call_answer() -> None:
    stream = ResponsesStream(context(tools=CODEX_TOOLS))
    raw = (
        stream.open() + stream.progress(1, 3) + stream.keepalive() + stream.text("Hel")
        + stream.text("lo") + stream.tool_call(0, "call_9", "multi_agent_v1__spawn_agent", "")
        + stream.tool_call(0, None, None, '{"a"') + stream.tool_call(0, None, None, ": 1}")
        + stream.finish("tool_calls", {"panel": "acc"})
        + stream.usage(TokenUsage(input_tokens=3, output_tokens=4, cost_usd=0.01))
        + stream.close()
    )  # fmt: skip
    assert b": fusion 1/3\n\n" in raw and b": keep-alive\n\n" in raw
    events = events_of(raw)
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    message_done, call_done = events[11]["item"], events[13]["item"]
    assert message_done["content"][0]["text"] == "Hello" and message_done["status"] == "completed"
    assert call_done == {
        "type": "function_call", "id": events[6]["item"]["id"], "call_id": "call_9",
        "name": "spawn_agent", "arguments": '{"a": 1}', "status": "completed",
        "namespace": "multi_agent_v1",
    }  # fmt: skip
    assert events[12]["arguments"] == '{"a": 1}'
    completed = events[-1]["response"]
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    assert completed["output"] == [message_done, call_done]
    assert completed["usage"]["total_tokens"] == 7 and completed["fusion"] == {"panel": "acc"}
    assert Response.model_validate(completed).output_text == "Hello"


def test_a_stream_cut_by_its_token_limit_ends_incomplete() -> None:
    stream = ResponsesStream(context())
    raw = stream.open() + stream.text("cut") + stream.finish("length") + stream.close()
    last = events_of(raw)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_empty_answer_still_completes() -> None:
    stream = ResponsesStream(context())
    events = events_of(stream.open() + stream.finish("stop") + stream.close())
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["output"] == []


@pytest.mark.parametrize(("status", "code"), [(502, "server_error"), (429, "rate_limit_exceeded")])
def test_a_failed_stream_ends_with_response_failed(status: int, code: str) -> None:
    stream = ResponsesStream(context())
    raw = (
        stream.open()
        + stream.text("partial")
        + stream.fail(
            StreamFailure(status=status, message="every member failed", type="upstream_error")
        )
    )
    last = events_of(raw)[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"] == {
        "code": code,
        "message": "every member failed",
        "type": "upstream_error",
    }


def test_stream_and_reply_of_one_context_share_the_response_id() -> None:
    ctx = context()
    stream = ResponsesStream(ctx)
    created = events_of(stream.open())[0]["response"]
    assert created["id"] == ctx.response_of(ChatAnswer(text="x")).id


# --- the recorded agents --------------------------------------------------------------------


def test_the_recordings_are_there() -> None:
    assert len(RECORDED) == 14


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recorded_request_translates(path: Path) -> None:
    body = json.loads(path.read_text())["body"]
    translation = translate(parse_request(body))
    chat = translation.chat_body
    validate_messages(chat["messages"])
    assert chat["model"] == body["model"]
    assert translation.ignored_tools == []
    encoded = msgspec.json.encode(chat)
    secrets = [
        item["encrypted_content"].encode()
        for item in body["input"]
        if isinstance(item, dict) and item.get("encrypted_content")
    ]
    assert b'"encrypted_content"' not in encoded
    assert not any(secret in encoded for secret in secrets)
    for forbidden in ("include", "store", "prompt_cache_key", "client_metadata", "input"):
        assert forbidden not in chat
    if body.get("stream"):
        assert chat["stream_options"] == {"include_usage": True}
    # A response to it validates as openai-python's Response, namespaced tools included.
    calls = [
        ToolCall(id=f"call_{position}", function=FunctionCall(name=tool["function"]["name"], arguments="{}"))
        for position, tool in enumerate(chat.get("tools", []))
    ]  # fmt: skip
    response_json(translation.context, ChatAnswer(text="ok", tool_calls=calls))
