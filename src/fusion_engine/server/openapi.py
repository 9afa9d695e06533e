"""What each route takes and gives, for the OpenAPI document (``/docs/openapi.json``).

The handlers read their raw body on purpose (passthrough must not pay for a typed decode), so
Litestar cannot see what they take or give; each route names its request and replies here, from
the same msgspec structs the gateway encodes and decodes, through ``documented`` (an
``operation_class``). Schemas are msgspec's own (exactly what msgspec accepts and writes), with
their references inlined: Litestar rebuilds ``components/schemas`` from its own registry and
would drop definitions put there by hand.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from copy import copy
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    RequestBody,
    Schema,
)

from ..config import LimitsSpec
from ..messages_api import NOT_COUNTED
from ..panels import PanelMember
from ..responses_api import DeletedResponse, ResponseObject, ResponsesRequest
from ..results import FusionResult
from .schema import ChatCompletionSchema, ChatRequest, ErrorBody, FuseRequest, JudgeSkipped

#: What each error status means on this gateway (the body is always OpenAI's error shape).
_ERROR_MEANINGS = {
    400: "Invalid request (``param`` names the field).",
    401: "Missing or wrong API key.",
    402: "Over the key's budget (``budget_exceeded``) or the cost ceiling.",
    403: "The key may not use this panel or plain model ids (its ``keys:`` allow-list).",
    404: "Unknown panel, model or judge template; no stored response by that id.",
    413: "Request body, message list or tool list too large.",
    415: "Without API keys: the body is not ``application/json`` (no cross-site form posts).",
    421: "Without API keys: the Host header is not a loopback name or address (DNS rebinding).",
    422: "Every member rejected the request with this status (the upstream's type and code).",
    429: "Rate limited, or every member was rate limited; see ``Retry-After``.",
    502: "Every member failed, at least one other than by timeout.",
    503: "The provider key is not configured (or stored responses or spend cannot be reached).",
    504: "No answer because of timeouts.",
}


def _string() -> Schema:
    return cast("Schema", {"type": "string"})


def _request_id() -> OpenAPIHeader:
    return OpenAPIHeader(
        description="The request's id (the client's own if it sent a well-formed one).",
        required=True,
        schema=cast("Schema", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}),
    )


def _retry_after() -> OpenAPIHeader:
    return OpenAPIHeader(
        description="Seconds to wait before trying again (absent when every member was rate "
        "limited and none said how long).",
        required=False,
        schema=cast("Schema", {"type": "string", "pattern": "^[0-9]+$"}),
    )


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def schema_of(kind: Any) -> Schema:
    """``kind``'s JSON Schema as msgspec reads and writes it, every ``$ref`` inlined."""
    (root,), definitions = msgspec.json.schema_components([kind], ref_template="{name}")
    return cast("Schema", _inline(root, definitions, ()))


def _inline(node: Any, definitions: Mapping[str, Any], within: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"]
            if name in within:  # none of ours is recursive; say so if one becomes it
                raise ValueError(f"recursive schema {' -> '.join((*within, name))}")
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**_inline(definitions[name], definitions, (*within, name)), **rest}
        inlined = {key: _inline(value, definitions, within) for key, value in node.items()}
        if inlined.get("type") == "integer":
            # msgspec decodes a JSON integer outside these bounds as a float, which an int
            # field then refuses: the bounds are part of what the field accepts.
            inlined = {"minimum": _INT_MIN, "maximum": _INT_MAX, **inlined}
        return inlined
    if isinstance(node, list):
        return [_inline(item, definitions, within) for item in node]
    return node


def json_reply(
    description: str, schema: Schema, *, headers: Mapping[str, OpenAPIHeader] | None = None
) -> OpenAPIResponse:
    """A JSON reply with this schema."""
    return OpenAPIResponse(
        description=description,
        content={"application/json": OpenAPIMediaType(schema=schema)},
        headers={"X-Request-Id": _request_id(), **(headers or {})},
    )


def event_stream(description: str) -> OpenAPIMediaType:
    """A ``text/event-stream`` body: the schema is one event's (what schemathesis checks)."""
    event = {
        "type": "object",
        "description": description,
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
    return OpenAPIMediaType(schema=cast("Schema", event))


def text_reply(description: str, media_type: str) -> OpenAPIResponse:
    """A plain-text reply of this media type."""
    return OpenAPIResponse(
        description=description,
        content={media_type: OpenAPIMediaType(schema=_string())},
        headers={"X-Request-Id": _request_id()},
    )


def error_replies(*statuses: int) -> dict[str, OpenAPIResponse]:
    """These error statuses, each with OpenAI's error body (and ``Retry-After`` on a 429)."""
    error = schema_of(ErrorBody)
    return {
        str(status): json_reply(
            _ERROR_MEANINGS[status],
            error,
            headers={"Retry-After": _retry_after()} if status == 429 else None,
        )
        for status in statuses
    }


def json_request(schema: Schema, description: str) -> RequestBody:
    """A required JSON request body with this schema."""
    return RequestBody(
        content={"application/json": OpenAPIMediaType(schema=schema)},
        description=description,
        required=True,
    )


def documented(
    replies: Mapping[str, OpenAPIResponse], *, request: RequestBody | None = None
) -> type[Operation]:
    """An ``operation_class`` for a route decorator: these replies and this request body.

    Litestar builds the rest of the operation (id, summary, description, parameters); this
    class replaces what it cannot know for a handler that reads its body itself.
    """

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            self.responses = dict(replies)
            if request is not None:
                self.request_body = request

    return DocumentedOperation


# --- the two routes that spend money ------------------------------------------------------------

#: Statuses a fusion can end in besides 200 (the same on both spending routes).
_FUSION_ERRORS = (400, 401, 402, 403, 404, 413, 415, 421, 422, 429, 502, 503, 504)


def _fused_headers() -> dict[str, OpenAPIHeader]:
    return {
        "X-Fusion-Cache": OpenAPIHeader(
            description="On fused replies: whether the cache answered.",
            schema=cast("Schema", {"enum": ["hit", "miss", "bypass", "off"]}),
        ),
        "X-Fusion-Degraded": OpenAPIHeader(
            description="``judge_failed`` when a member's answer stood in for the judge.",
            schema=_string(),
        ),
        "Server-Timing": OpenAPIHeader(
            description="On non-streamed fused replies: ``members;dur=…, judge;dur=…, "
            "gateway;dur=…`` (milliseconds; members and judge are 0 on a cache hit).",
            schema=_string(),
        ),
    }


def completion_schema() -> Schema:
    """A fused ``chat.completion`` (with ``fusion``), or a passed-through model's reply."""
    fused = cast("dict[str, Any]", schema_of(ChatCompletionSchema))
    judge = fused["properties"]["fusion"]["properties"]["judge"]
    judge["anyOf"].insert(1, schema_of(JudgeSkipped))  # see FusionDetailSchema
    passed_through = {
        "type": "object",
        "description": "Any other model id: the provider's chat.completion, as it sent it.",
    }
    return cast("Schema", {"anyOf": [fused, passed_through]})


def _message_schema() -> dict[str, Any]:
    """A conversation message as ``protocol.validate_messages`` accepts it (other keys kept)."""
    text: dict[str, Any] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]
    }
    return {
        "description": "A chat message: content is a string or an array of content parts.",
        "anyOf": [
            {
                "type": "object",
                "properties": {"role": {"enum": ["system", "developer", "user"]}, "content": text},
                "required": ["role", "content"],
            },
            {
                "type": "object",
                "properties": {
                    "role": {"enum": ["assistant", "function"]},
                    "content": {"anyOf": [*text["anyOf"], {"type": "null"}]},
                },
                "required": ["role"],
            },
            {
                "type": "object",
                "properties": {
                    "role": {"const": "tool"},
                    "content": text,
                    "tool_call_id": {"type": "string"},
                },
                "required": ["role", "content", "tool_call_id"],
            },
        ],
    }


def _conversation_schema(limits: LimitsSpec) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": limits.max_messages,
        "items": _message_schema(),
        "description": "The conversation (at most the gateway's ``limits.max_messages``).",
    }


def _tools_schema(limits: LimitsSpec) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "array", "items": {"type": "object"}, "maxItems": limits.max_tools},
            {"type": "null"},
        ],
        "description": "OpenAI tools (at most the gateway's ``limits.max_tools``).",
    }


def chat_request_schema(limits: LimitsSpec) -> Schema:
    """ChatRequest's schema with the checks the route makes after decoding written in."""
    schema = cast("dict[str, Any]", schema_of(ChatRequest))
    schema["properties"]["messages"] = _conversation_schema(limits)
    schema["properties"]["tools"] = _tools_schema(limits)
    schema["properties"]["model"] = {
        "type": "string",
        "minLength": 1,
        "description": "``fusion/<panel>`` fuses that panel (then ``n`` may only be 1); any other "
        "id is passed through to the passthrough provider.",
    }
    # stream_options only together with stream: true.
    schema["anyOf"] = [
        {"properties": {"stream": {"const": True}}, "required": ["stream"]},
        {"not": {"required": ["stream_options"]}},
        {"properties": {"stream_options": {"type": "null"}}},
    ]
    return cast("Schema", schema)


#: Not blank, as Python's ``str.strip`` sees it: ECMA's ``\s`` (the pattern dialect) lacks
#: the separators U+001C-U+001F and U+0085 that Python strips.
_NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


def _slug() -> dict[str, Any]:
    """A model slug: anything but blank."""
    return {"type": "string", "pattern": _NOT_BLANK}


def _member_schema(providers: Collection[str]) -> dict[str, Any]:
    """PanelMember with the checks ``panels.validate_panel`` makes written in."""
    member = cast("dict[str, Any]", schema_of(PanelMember))
    properties = member["properties"]
    properties["slug"] = _slug()
    properties["max_tokens"] = {
        "anyOf": [{"type": "integer", "minimum": 1, "maximum": _INT_MAX}, {"type": "null"}]
    }
    properties["temperature"] = {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": 2}, {"type": "null"}]
    }
    properties["top_p"] = {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]
    }
    properties["provider"] = {"anyOf": [{"enum": sorted(providers)}, {"type": "null"}]}
    return member


def fuse_request_schema(limits: LimitsSpec, providers: Collection[str]) -> Schema:
    """FuseRequest's schema: exactly one of prompt and messages, one of panel and models."""
    schema = cast("dict[str, Any]", schema_of(FuseRequest))
    properties = schema["properties"]
    properties["prompt"] = {"type": "string", "pattern": _NOT_BLANK, "description": "Not blank."}
    properties["messages"] = _conversation_schema(limits)
    properties["tools"] = _tools_schema(limits)
    properties["panel"] = {"type": "string", "description": "A panel's name."}
    properties["models"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": limits.max_members,
        "items": {"anyOf": [_slug(), _member_schema(providers)]},
        "description": "An ad-hoc panel: model slugs, or members with their own settings "
        "(at most the gateway's ``limits.max_members``).",
    }
    properties["judge_model"] = {
        **_slug(),
        "description": "The judge; required with ``models``, optional with a panel.",
    }
    schema["allOf"] = [
        _one_of(["prompt"], ["messages"]),
        _one_of(["panel"], ["models", "judge_model"]),
    ]
    return cast("Schema", schema)


def _one_of(first: list[str], second: list[str]) -> dict[str, Any]:
    """Either the ``first`` fields or the ``second`` ones (their first field names the choice)."""
    return {
        "oneOf": [
            {"required": first, "not": {"required": second[:1]}},
            {"required": second, "not": {"required": first[:1]}},
        ]
    }


def _answer_operation(
    *,
    reply: OpenAPIResponse,
    stream: str,
    request: RequestBody,
    anthropic: bool = False,
) -> type[Operation]:
    """An answering route (chat, Responses, Messages): its JSON ``reply`` or SSE ``stream``, the
    gateway's errors and a passed-through provider's, in the route's error shape."""
    reply.content = {**(reply.content or {}), "text/event-stream": event_stream(stream)}
    errors = anthropic_error_replies if anthropic else error_replies
    passthrough_error = json_reply(
        "A passed-through provider's error status, in "
        + ("Anthropic's shape." if anthropic else "OpenAI's shape (its type, code, param)."),
        _anthropic_error_schema() if anthropic else schema_of(ErrorBody),
    )
    return documented(
        {"200": reply, **errors(*_FUSION_ERRORS), "default": passthrough_error}, request=request
    )


def chat_operation(limits: LimitsSpec) -> type[Operation]:
    """``POST /v1/chat/completions``: the request, the reply (JSON or SSE) and its errors."""
    return _answer_operation(
        reply=json_reply(
            "A chat.completion; with ``stream: true``, chat.completion.chunk events ending in "
            "``data: [DONE]``.",
            completion_schema(),
            headers=_fused_headers(),
        ),
        stream="``data:`` lines, each a chat.completion.chunk (the finishing one carries "
        "``fusion``), then ``data: [DONE]``; a late error comes in-band as ``data: {error}``.",
        request=json_request(
            chat_request_schema(limits),
            "OpenAI's chat request. ``fusion/<panel>`` (or ``fusion-<panel>``) fuses a panel; any "
            "other model id is passed through. Fields not listed are kept and forwarded.",
        ),
    )


def fuse_operation(limits: LimitsSpec, providers: Collection[str]) -> type[Operation]:
    """``POST /fuse``: the request, the FusionResult (JSON or SSE progress) and its errors."""
    reply = json_reply(
        "The whole FusionResult; with ``stream: true``, SSE progress events.",
        schema_of(FusionResult),
        headers=_fused_headers(),
    )
    reply.content = {
        **(reply.content or {}),
        "text/event-stream": event_stream(
            "``event: member`` (a PanelResponse as each member finishes), ``event: judge`` (each "
            "delta of the judge's text), ``event: result`` (the FusionResult), ``event: error``."
        ),
    }
    return documented(
        {"200": reply, **error_replies(*_FUSION_ERRORS)},
        request=json_request(
            fuse_request_schema(limits, providers), "A prompt or messages, and a panel or models."
        ),
    )


def embeddings_operation() -> type[Operation]:
    """``POST /v1/embeddings``: OpenAI's request, passed through; the provider's reply."""
    request = {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "An embedding model of the passthrough provider (not a panel).",
            },
            "input": {
                "description": "A string, a list of strings, or token ids.",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                    {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                    },
                ],
            },
        },
        "required": ["model", "input"],
    }
    reply = json_reply(
        "The provider's embedding list, as it sent it.",
        cast("Schema", {"type": "object", "description": "OpenAI's embedding list."}),
    )
    passthrough_error = json_reply(
        "The provider's error status, in OpenAI's shape (its type, code, param).",
        schema_of(ErrorBody),
    )
    return documented(
        {
            "200": reply,
            **error_replies(400, 401, 402, 403, 404, 413, 415, 421, 429, 503),
            "default": passthrough_error,
        },
        request=json_request(
            cast("Schema", request),
            "OpenAI's embeddings request; fields not listed are forwarded too.",
        ),
    )


# --- the Anthropic Messages API (``messages_api``) ----------------------------------------------

#: Content block types the gateway reads; any other type is dropped, whatever its fields.
_READ_BLOCKS = ["text", "image", "tool_use", "tool_result", "tool_reference"]


def _anthropic_error_schema() -> Schema:
    error = {
        "type": "object",
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        "required": ["type", "message"],
    }
    return cast(
        "Schema",
        {
            "type": "object",
            "properties": {"type": {"const": "error"}, "error": error},
            "required": ["type", "error"],
        },
    )


def anthropic_error_replies(*statuses: int) -> dict[str, OpenAPIResponse]:
    """These error statuses, each with Anthropic's error body (and ``Retry-After`` on a 429)."""
    return {
        str(status): json_reply(
            _ERROR_MEANINGS[status],
            _anthropic_error_schema(),
            headers={"Retry-After": _retry_after()} if status == 429 else None,
        )
        for status in statuses
    }


def _block(kind: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"const": kind}, **properties},
        "required": ["type", *required],
    }


def _content_block_schema(*, nested: bool = False) -> dict[str, Any]:
    """A content block as ``messages_api`` reads it (``nested``: inside a tool result)."""
    string = {"type": "string"}
    image_source = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "type": {"const": "base64"},
                    "media_type": {"anyOf": [string, {"type": "null"}]},
                    "data": {"anyOf": [string, {"type": "null"}]},
                },
                "required": ["type"],
            },
            {
                "type": "object",
                "properties": {
                    "type": {"const": "url"},
                    "url": {"anyOf": [string, {"type": "null"}]},
                },
                "required": ["type"],
            },
        ]
    }
    blocks = [
        _block("text", {"text": string}, ["text"]),
        _block("image", {"source": image_source}, ["source"]),
        _block("tool_use", {"id": string, "name": string, "input": {}}, ["id", "name"]),
        _block("tool_reference", {"tool_name": string}, ["tool_name"]),
        {
            "type": "object",
            "description": "Any other block type (``thinking``, ``document``…): dropped.",
            "properties": {"type": {"not": {"enum": _READ_BLOCKS}}},
        },
    ]
    if not nested:
        content = {
            "anyOf": [
                string,
                {"type": "array", "items": _content_block_schema(nested=True)},
                {"type": "null"},
            ]
        }
        blocks.insert(
            3,
            _block(
                "tool_result",
                {"tool_use_id": string, "content": content, "is_error": {"type": "boolean"}},
                ["tool_use_id"],
            ),
        )
    return {"anyOf": blocks}


def messages_request_schema(limits: LimitsSpec, *, count_only: bool = False) -> Schema:
    """A Messages request as ``messages_api`` reads it (``count_only``: ``count_tokens``'s,
    which has no ``max_tokens``); other fields are accepted and dropped."""
    string = {"type": "string"}
    content = {"anyOf": [string, {"type": "array", "items": _content_block_schema()}]}
    message = {
        "type": "object",
        "properties": {"role": {"enum": ["user", "assistant", "system"]}, "content": content},
        "required": ["role", "content"],
    }
    nullable_string = {"anyOf": [string, {"type": "null"}]}
    custom_tool = {
        "type": "object",
        "properties": {
            "type": {"anyOf": [{"const": "custom"}, {"type": "null"}]},
            "name": {"type": "string", "minLength": 1},
            "description": nullable_string,
            "input_schema": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["name"],
    }
    server_tool = {
        "type": "object",
        "description": "A server tool: ``web_search_*`` turns on fusion's web search; others "
        "are dropped.",
        "properties": {
            "type": {"type": "string", "not": {"const": "custom"}},
            "name": nullable_string,
            "description": nullable_string,
            "input_schema": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["type"],
    }
    tool_choice = {
        "type": "object",
        "properties": {
            "type": {"enum": ["auto", "any", "tool", "none"]},
            "name": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
            "disable_parallel_tool_use": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        },
        "required": ["type"],
        "anyOf": [
            {"properties": {"type": {"enum": ["auto", "any", "none"]}}},
            {"required": ["name"], "properties": {"name": {"type": "string"}}},
        ],
    }
    number = {"anyOf": [{"type": "number"}, {"type": "null"}]}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "``fusion/<panel>`` fuses that panel; any other id is passed "
                "through to the passthrough provider's chat completions.",
            },
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_messages,
                "items": message,
                "description": "The conversation (at most the gateway's ``limits.max_messages``)"
                "; ``role: system`` turns are folded into the system prompt.",
            },
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": _INT_MAX},
            "system": {
                "anyOf": [
                    string,
                    {"type": "array", "items": _content_block_schema(nested=True)},
                    {"type": "null"},
                ]
            },
            "tools": {
                "anyOf": [
                    {
                        "type": "array",
                        "maxItems": limits.max_tools,
                        "items": {"anyOf": [custom_tool, server_tool]},
                    },
                    {"type": "null"},
                ],
                "description": "Client tools (``defer_loading`` ones too) and server tools "
                "(at most the gateway's ``limits.max_tools``).",
            },
            "tool_choice": {"anyOf": [tool_choice, {"type": "null"}]},
            "stop_sequences": {"anyOf": [{"type": "array", "items": string}, {"type": "null"}]},
            "temperature": number,
            "top_p": number,
            "stream": {"type": "boolean"},
        },
        "required": ["model", "messages"] if count_only else ["model", "messages", "max_tokens"],
    }
    if not count_only:
        # System turns fold into the system prompt: something else must remain.
        schema["properties"]["messages"]["contains"] = {
            "type": "object",
            "properties": {"role": {"enum": ["user", "assistant"]}},
        }
    else:
        for unused in NOT_COUNTED:
            del schema["properties"][unused]
    return cast("Schema", schema)


def messages_operation(limits: LimitsSpec) -> type[Operation]:
    """``POST /v1/messages``: the request, the reply (JSON or SSE) and its errors."""
    return _answer_operation(
        reply=json_reply(
            "A ``message`` (with ``fusion`` on fused replies); with ``stream: true``, "
            "Anthropic's SSE events.",
            cast("Schema", {"type": "object", "description": "Anthropic's message object."}),
            headers=_fused_headers(),
        ),
        stream="``message_start``, per block ``content_block_start``/``content_block_delta``/"
        "``content_block_stop``, ``message_delta`` (stop reason, usage, ``fusion``), "
        "``message_stop``; ``ping`` while the panel works; ``error`` for a late error.",
        request=json_request(
            messages_request_schema(limits),
            "Anthropic's Messages request. Fields the gateway does not use (``thinking``, "
            "``metadata``, ``context_management``…) are accepted and dropped.",
        ),
        anthropic=True,
    )


def count_tokens_operation(limits: LimitsSpec) -> type[Operation]:
    """``POST /v1/messages/count_tokens``: an estimate of the request's input tokens."""
    reply = json_reply(
        "The estimate (the conversation's and tools' characters over 3.5).",
        cast(
            "Schema",
            {
                "type": "object",
                "properties": {"input_tokens": {"type": "integer", "minimum": 1}},
                "required": ["input_tokens"],
            },
        ),
    )
    return documented(
        {"200": reply, **anthropic_error_replies(400, 401, 413, 415, 421, 429)},
        request=json_request(
            messages_request_schema(limits, count_only=True),
            "A Messages request without ``max_tokens``.",
        ),
    )


def described(handler: HTTPRouteHandler, operation: type[Operation]) -> HTTPRouteHandler:
    """A copy of a route handler documented by ``operation``.

    For the routes whose documentation depends on the gateway config (its limits and providers):
    ``create_app`` attaches it per app. The handler itself is untouched (Litestar copies handlers
    on registration anyway).
    """
    copied = copy(handler)
    copied.operation_class = operation
    return copied


# --- the Responses API --------------------------------------------------------------------------


def _text_parts(*kinds: str) -> dict[str, Any]:
    """Content parts of these types, as ``responses_api`` reads them."""
    shapes = {
        "input_text": {"text": {"type": "string"}},
        "output_text": {"text": {"type": "string"}},
        "refusal": {"refusal": {"type": "string"}},
        "input_image": {"image_url": {"type": "string"}, "detail": {"type": "string"}},
    }
    variants = []
    for kind in kinds:
        fields = shapes[kind]
        required = ["type", next(iter(fields))]
        variants.append(
            {
                "type": "object",
                "properties": {"type": {"const": kind}, **fields},
                "required": required,
            }
        )
    return {"type": "array", "items": {"anyOf": variants}}


def _input_item_schema() -> dict[str, Any]:
    """One ``input`` item: a message, a function call or its output, or a reasoning item
    (accepted and dropped)."""
    text_only = _text_parts("input_text", "output_text", "refusal")
    with_images = _text_parts("input_text", "output_text", "refusal", "input_image")
    message_type = {"const": "message"}
    return {
        "anyOf": [
            {
                "type": "object",
                "description": "A user message (``type`` may be left out); images by URL.",
                "properties": {
                    "type": message_type,
                    "role": {"const": "user"},
                    "content": {"anyOf": [{"type": "string"}, with_images]},
                },
                "required": ["role", "content"],
            },
            {
                "type": "object",
                "description": "A system, developer or assistant message (text only).",
                "properties": {
                    "type": message_type,
                    "role": {"enum": ["system", "developer", "assistant"]},
                    "content": {"anyOf": [{"type": "string"}, text_only]},
                },
                "required": ["role", "content"],
            },
            {
                "type": "object",
                "description": "A function call of an earlier answer.",
                "properties": {
                    "type": {"const": "function_call"},
                    "call_id": {"type": "string"},
                    "name": {"type": "string"},
                    "arguments": {"type": "string"},
                    "namespace": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["type", "call_id", "name"],
            },
            {
                "type": "object",
                "description": "A function's result.",
                "properties": {
                    "type": {"const": "function_call_output"},
                    "call_id": {"type": "string"},
                    "output": {"anyOf": [{"type": "string"}, with_images]},
                },
                "required": ["type", "call_id", "output"],
            },
            {
                "type": "object",
                "description": "Reasoning of an earlier answer: accepted and dropped (its "
                "``encrypted_content`` is never forwarded).",
                "properties": {"type": {"const": "reasoning"}},
                "required": ["type"],
            },
        ]
    }


def _function_tool_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "type": {"const": "function"},
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "parameters": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "strict": {"type": "boolean"},
        },
        "required": ["type", "name"],
    }


def _other_tool_schema(*served: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Any other tool type: left out, named in ``X-Fusion-Warning``.",
        "properties": {"type": {"not": {"enum": list(served)}}},
    }


def responses_request_schema(limits: LimitsSpec) -> Schema:
    """ResponsesRequest's schema with what the translation checks written in."""
    schema = cast("dict[str, Any]", schema_of(ResponsesRequest))
    properties = schema["properties"]
    properties["model"] = {
        "type": "string",
        "minLength": 1,
        "description": "``fusion/<panel>`` (or ``fusion-<panel>``) fuses that panel; any other "
        "id is passed through to the passthrough provider's chat completions.",
    }
    properties["input"] = {
        "anyOf": [
            {"type": "string"},
            {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_messages,
                "items": _input_item_schema(),
                # Reasoning items alone leave nothing to answer.
                "contains": {
                    "not": {
                        "type": "object",
                        "properties": {"type": {"const": "reasoning"}},
                        "required": ["type"],
                    }
                },
            },
        ],
        "description": "A user message, or items (at most the gateway's ``limits.max_messages``).",
    }
    namespace = {
        "type": "object",
        "description": "Tools under a namespace: each function is served as "
        "``<namespace>__<name>`` and its calls come back with ``namespace``.",
        "properties": {
            "type": {"const": "namespace"},
            "name": {"type": "string", "minLength": 1},
            "tools": {
                "type": "array",
                "items": {"anyOf": [_function_tool_schema(), _other_tool_schema("function")]},
            },
        },
        "required": ["type", "name"],
    }
    properties["tools"] = {
        "anyOf": [
            {
                "type": "array",
                "maxItems": limits.max_tools,
                "items": {
                    "anyOf": [
                        _function_tool_schema(),
                        namespace,
                        _other_tool_schema("function", "namespace"),
                    ]
                },
            },
            {"type": "null"},
        ],
        "description": "``function`` and ``namespace`` tools; ``web_search`` turns the fusion "
        "web search on unless ``external_web_access: false``; other types are left out.",
    }
    properties["tool_choice"] = {
        "anyOf": [{"enum": ["auto", "none", "required"]}, {"type": "null"}],
        "description": "Also ``{type: function, name}`` naming one of the function tools.",
    }
    properties["text"] = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "format": {
                        "anyOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "properties": {"type": {"enum": ["text", "json_object"]}},
                            },
                            {
                                "type": "object",
                                "properties": {
                                    "type": {"const": "json_schema"},
                                    "name": {"type": "string", "minLength": 1},
                                    "schema": {"type": "object"},
                                },
                                "required": ["type", "name", "schema"],
                            },
                        ]
                    }
                },
            },
            {"type": "null"},
        ]
    }
    chat = cast("dict[str, Any]", chat_request_schema(limits))
    properties["fusion"] = chat["properties"]["fusion"]
    return cast("Schema", schema)


def _response_schema() -> Schema:
    return schema_of(ResponseObject)


def responses_operation(limits: LimitsSpec) -> type[Operation]:
    """``POST /v1/responses``: the request, the ``response`` (JSON or SSE) and its errors."""
    headers = {
        **_fused_headers(),
        "X-Fusion-Warning": OpenAPIHeader(
            description="The tool types the gateway left out of the request.", schema=_string()
        ),
    }
    return _answer_operation(
        reply=json_reply("A ``response`` object.", _response_schema(), headers=headers),
        stream="``event:`` and ``data:`` lines: response.created, response.in_progress, per item "
        "response.output_item.added, deltas, their .done events and response.output_item.done, "
        "then response.completed (or response.incomplete / response.failed).",
        request=json_request(
            responses_request_schema(limits),
            "OpenAI's Responses request. ``store`` (default true) keeps the response for "
            "``previous_response_id``, GET and DELETE, for the caller's key only.",
        ),
    )


def stored_response_operation() -> type[Operation]:
    """``GET /v1/responses/{id}``: a stored response or a 404."""
    return documented(
        {
            "200": json_reply("The stored ``response`` object.", _response_schema()),
            **error_replies(401, 404, 421, 429, 503),
        }
    )


def deleted_response_operation() -> type[Operation]:
    """``DELETE /v1/responses/{id}``: the deletion or a 404."""
    return documented(
        {
            "200": json_reply("The deletion.", schema_of(DeletedResponse)),
            **error_replies(401, 404, 421, 429, 503),
        }
    )
