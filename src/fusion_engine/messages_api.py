"""The Anthropic Messages API (``POST /v1/messages``) to and from the gateway's chat-completions
form. Pure: no Litestar, no aiohttp.

Three directions, all here so the server route stays a thin adapter over the one chat pipeline:

- ``chat_body_of``: a Messages request → the chat-completions body a chat client would send
  (``system`` and ``role: "system"`` messages folded into one system message, ``tool_use`` →
  assistant ``tool_calls``, ``tool_result`` → ``tool`` messages, tools and ``tool_choice``
  in chat form). What Claude Code sends and the gateway cannot use (``thinking``,
  ``context_management``, ``output_config``, ``safeguards``, ``cache_control``, ``top_k``, server
  tools, unknown block types and fields) is dropped, never refused: Claude Code answers a 400 by
  retrying up to six times with features stripped.
- ``message_of``: a whole ``ChatAnswer`` → a ``message`` object.
- ``MessageStreamRenderer``: a streamed answer → the ``event:``/``data:`` lines of Anthropic's
  SSE stream, every content block opened, fed and closed (Claude Code discards text whose block
  is never closed, and reads tool input only from ``input_json_delta``).

``count_tokens`` estimates a request's input tokens with the cost estimate's characters per token.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

import msgspec

from .chat_stream import ChatAnswer, HoldsTheEnd, StreamFailure, TokenUsage
from .costs import CHARS_PER_TOKEN
from .errors import InvalidRequestError
from .plan import panel_of_model
from .protocol import FunctionCall, PositiveInt, ToolCall, split_validation_error

#: Anthropic's error ``type`` for each status the gateway answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_type_of(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (other 4xx are invalid requests, other
    5xx are API errors)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type_of(status), "message": message}}


# --- the request, as read (unknown fields are tolerated everywhere) ----------------------------

#: One content block exactly as the client sent it; read by its ``type`` (``_read_block``),
#: so a block type this gateway does not know is skipped instead of failing the whole request.
Block = dict[str, Any]


class InputMessage(msgspec.Struct, frozen=True):
    """One turn of ``messages``."""

    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolDefinition(msgspec.Struct, frozen=True):
    """One entry of ``tools``: a client tool (no ``type``, or ``custom``) or a server tool."""

    name: str | None = None
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct, frozen=True):
    """``tool_choice``: ``auto``, ``any``, ``tool`` (with ``name``) or ``none``."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a Messages request the gateway uses; every other field is dropped."""

    model: str
    messages: list[InputMessage]
    #: Required by the API; optional here so ``count_tokens`` (which has none) reads the same
    #: struct and ``chat_body_of`` names the missing field itself.
    max_tokens: PositiveInt | None = None
    system: str | list[Block] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False


class TextBlockIn(msgspec.Struct, frozen=True):
    text: str


class ImageSource(msgspec.Struct, frozen=True):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlockIn(msgspec.Struct, frozen=True):
    source: ImageSource


class ToolUseBlockIn(msgspec.Struct, frozen=True):
    id: str
    name: str
    input: Any = msgspec.field(default_factory=dict)


class ToolReferenceBlockIn(msgspec.Struct, frozen=True):
    tool_name: str


class ToolResultBlockIn(msgspec.Struct, frozen=True):
    tool_use_id: str
    content: str | list[Block] | None = None
    is_error: bool = False


_BLOCK_TYPES: dict[str, type[msgspec.Struct]] = {
    "text": TextBlockIn,
    "image": ImageBlockIn,
    "tool_use": ToolUseBlockIn,
    "tool_result": ToolResultBlockIn,
    "tool_reference": ToolReferenceBlockIn,
}

ReadBlock = TextBlockIn | ImageBlockIn | ToolUseBlockIn | ToolResultBlockIn | ToolReferenceBlockIn


def _convert(value: Any, struct: type[Any], where: str) -> Any:
    """``msgspec.convert`` whose error names the client's field (``messages[2].content[0].id``)."""
    try:
        return msgspec.convert(value, struct)
    except msgspec.ValidationError as exc:
        field, problem = split_validation_error(str(exc))
        param = f"{where}.{field}" if where and field else (where or field)
        raise InvalidRequestError(f"{param}: {problem}" if param else problem, param=param) from exc


def _read_block(block: Any, where: str) -> ReadBlock | None:
    """A content block as its struct, or ``None`` for a type the gateway drops (``thinking``,
    ``redacted_thinking``, server-tool blocks, documents, anything newer than this module)."""
    if not isinstance(block, dict):
        raise InvalidRequestError(f"{where} must be a content block object", param=where)
    kind = block.get("type")
    struct = _BLOCK_TYPES.get(kind) if isinstance(kind, str) else None
    if struct is None:
        return None
    read: ReadBlock = _convert(block, struct, where)
    if isinstance(read, ToolResultBlockIn) and isinstance(read.content, list):
        # Checked here, where the error can name the client's field; read again when used.
        _blocks(read.content, f"{where}.content")
    return read


def _blocks(content: str | list[Block] | None, where: str) -> list[ReadBlock]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlockIn(text=content)]
    read = (_read_block(block, f"{where}[{index}]") for index, block in enumerate(content))
    return [block for block in read if block is not None]


def read_request(raw: dict[str, Any]) -> MessagesRequest:
    """The typed view of a Messages request, each type error naming its field.

    Raises:
        InvalidRequestError: a field is missing or of the wrong type.
    """
    request: MessagesRequest = _convert(raw, MessagesRequest, "")
    if not request.messages:
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    return request


# --- request → chat completions ----------------------------------------------------------------

#: Anthropic's tool-use id alphabet; a provider's call id outside it is rewritten (the same way
#: each time, so a call and its result still match when the client sends them back).
_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def chat_body_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body for a Messages request, as a chat client would send it.

    Raises:
        InvalidRequestError: the request is malformed or lacks ``max_tokens`` (400).
    """
    request = read_request(raw)
    if request.max_tokens is None:
        raise InvalidRequestError("max_tokens: Field required", param="max_tokens")
    if all(message.role == "system" for message in request.messages):
        raise InvalidRequestError(
            "messages: at least one user or assistant message is required", param="messages"
        )
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages_of(request),
        "max_tokens": request.max_tokens,
        "stream": request.stream,
    }
    if request.stream:
        # So passthrough providers report usage, which message_delta carries.
        body["stream_options"] = {"include_usage": True}
    for name, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("stop", request.stop_sequences or None),
    ):
        if value is not None:
            body[name] = value
    tools, web_search = _chat_tools(request.tools or [])
    if tools:
        body["tools"] = tools
        if request.tool_choice is not None:
            body.update(_chat_tool_choice(request.tool_choice))
    if web_search and panel_of_model(request.model) is not None:
        # Fusion's own search option; a passed-through provider would not know the field.
        body["fusion"] = {"web_search": True}
    return body


def chat_messages_of(request: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation in chat form: one system message first (``system`` and every
    ``role: "system"`` turn, which Claude Code puts after the first user turn), then the turns."""
    system = _texts(_blocks(request.system, "system"))
    messages: list[dict[str, Any]] = []
    for position, message in enumerate(request.messages):
        where = f"messages[{position}].content"
        blocks = _blocks(message.content, where)
        if message.role == "system":
            system.extend(_texts(blocks))
        elif message.role == "assistant":
            messages.extend(_assistant_turn(blocks))
        else:
            messages.extend(_user_turn(blocks))
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return messages


def _texts(blocks: list[ReadBlock]) -> list[str]:
    return [block.text for block in blocks if isinstance(block, TextBlockIn) and block.text]


def _assistant_turn(blocks: list[ReadBlock]) -> list[dict[str, Any]]:
    text = "\n\n".join(_texts(blocks))
    calls = [
        {
            "id": block.id,
            "type": "function",
            "function": {"name": block.name, "arguments": _json(block.input)},
        }
        for block in blocks
        if isinstance(block, ToolUseBlockIn)
    ]
    # A turn of only thinking still says the assistant spoke (and keeps the conversation from
    # translating to nothing at all).
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user_turn(blocks: list[ReadBlock]) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, which chat wants right after the assistant's
    calls; the turn's text and images follow them as one user message."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, ToolResultBlockIn):
            text, images = _tool_result(block)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
            )
            parts.extend(images)
        elif isinstance(block, TextBlockIn):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlockIn):
            parts.append(_image_part(block))
        elif isinstance(block, ToolReferenceBlockIn):
            parts.append({"type": "text", "text": _tool_reference(block)})
    if not parts:
        # A turn of nothing usable is still a user turn (never an empty conversation).
        return tool_messages or [{"role": "user", "content": ""}]
    if all(part["type"] == "text" for part in parts):
        # A plain string: every chat upstream takes it, not all take arrays of parts.
        content: str | list[dict[str, Any]] = "\n\n".join(part["text"] for part in parts)
    else:
        content = parts
    return [*tool_messages, {"role": "user", "content": content}]


def _tool_result(block: ToolResultBlockIn) -> tuple[str, list[dict[str, Any]]]:
    """The text of a tool message and the images it carried (chat's tool messages take text
    only, so images travel in the user message that follows)."""
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    content = block.content
    for part in _blocks(content, "tool_result.content"):
        if isinstance(part, TextBlockIn):
            texts.append(part.text)
        elif isinstance(part, ToolReferenceBlockIn):
            texts.append(_tool_reference(part))
        elif isinstance(part, ImageBlockIn):
            images.append(_image_part(part))
            texts.append(f"[image {len(images)} of this result follows in the next message]")
    text = "\n\n".join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return text, images


def _tool_reference(block: ToolReferenceBlockIn) -> str:
    # Anthropic expands a reference into the deferred tool's definition; here every deferred
    # tool is already in `tools`, so naming it is all the model needs.
    return f"Tool {block.tool_name} is now available."


def _image_part(block: ImageBlockIn) -> dict[str, Any]:
    source = block.source
    if source.type == "url":
        url = source.url or ""
    else:
        url = f"data:{source.media_type or 'image/png'};base64,{source.data or ''}"
    return {"type": "image_url", "image_url": {"url": url}}


def _chat_tools(tools: list[ToolDefinition]) -> tuple[list[dict[str, Any]], bool]:
    """Client tools in chat form (``defer_loading`` ones too), and whether web search (a server
    tool) was asked for; other server tools are dropped."""
    chat_tools: list[dict[str, Any]] = []
    web_search = False
    for position, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            web_search = web_search or tool.type.startswith("web_search")
            continue
        if not tool.name:
            raise InvalidRequestError(
                f"tools[{position}].name: Field required", param=f"tools[{position}].name"
            )
        schema = dict(tool.input_schema or {"type": "object", "properties": {}})
        # JSON-Schema's dialect marker means nothing to a function schema; some providers
        # refuse it.
        schema.pop("$schema", None)
        function: dict[str, Any] = {"name": tool.name, "parameters": schema}
        if tool.description:
            function["description"] = tool.description
        chat_tools.append({"type": "function", "function": function})
    return chat_tools, web_search


def _chat_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequestError("tool_choice.name: Field required", param="tool_choice.name")
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    return fields


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


#: Request fields that do not change a request's input tokens: ``count_tokens`` ignores them,
#: whatever they hold (its schema leaves them out).
NOT_COUNTED = ("max_tokens", "stop_sequences", "temperature", "top_p", "stream")


def count_tokens(raw: dict[str, Any]) -> int:
    """An estimate of a request's input tokens: the characters of its chat form (conversation
    and tools, as JSON) over the cost estimate's characters per token. No tokenizer: the panel's
    models each count differently anyway.

    Raises:
        InvalidRequestError: the request is malformed.
    """
    request = read_request({key: value for key, value in raw.items() if key not in NOT_COUNTED})
    tools, _ = _chat_tools(request.tools or [])
    return estimate_input_tokens(chat_messages_of(request), tools)


def estimate_input_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> int:
    """The input tokens of a chat conversation and its tools, estimated from their JSON's
    length (``count_tokens``'s answer, and ``message_start``'s usage before the real count)."""
    characters = len(_json(messages)) + (len(_json(tools)) if tools else 0)
    return int(characters / CHARS_PER_TOKEN) + 1


# --- answers → messages --------------------------------------------------------------------------


class TextContent(msgspec.Struct, frozen=True, tag="text", tag_field="type"):
    """A ``text`` content block."""

    text: str


class ToolUseContent(msgspec.Struct, frozen=True, tag="tool_use", tag_field="type"):
    """A ``tool_use`` content block; ``input`` is ``{}`` at a streamed block's start."""

    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextContent | ToolUseContent


class MessageUsage(msgspec.Struct, frozen=True, kw_only=True):
    """``usage`` of a message; ``cost`` (USD, the gateway's addition) only when known."""

    input_tokens: int
    output_tokens: int
    cost: float | msgspec.UnsetType = msgspec.UNSET


class AnthropicMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A ``message`` object: the reply to a non-streamed request, and ``message_start``'s."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: MessageUsage
    #: The ``fusion`` detail object, on fused replies only.
    fusion: Any | msgspec.UnsetType = msgspec.UNSET


def message_id() -> str:
    """A new message id, in Anthropic's ``msg_…`` form."""
    return f"msg_{secrets.token_hex(12)}"


def tool_use_id(call_id: str | None) -> str:
    """The ``tool_use`` id for a tool call: the call's own id when it has one (Anthropic's
    alphabet enforced), else a new ``toolu_…``."""
    if not call_id:
        return f"toolu_{secrets.token_hex(12)}"
    return _TOOL_ID_UNSAFE.sub("_", call_id)


def stop_reason_of(finish_reason: str | None, called_tools: bool) -> str:
    """Anthropic's ``stop_reason`` for a chat ``finish_reason``.

    A tool call means ``tool_use`` whatever the provider said (some say ``stop``), unless the
    answer was cut at its token limit. Chat completions does not say which stop sequence
    matched, so ``stop_sequence`` is never reported.
    """
    if finish_reason == "length":
        return "max_tokens"
    if called_tools or finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if finish_reason == "content_filter":
        return "refusal"
    return "end_turn"


def _usage(usage: TokenUsage | None, input_tokens: int = 0) -> MessageUsage:
    if usage is None:
        return MessageUsage(input_tokens=input_tokens, output_tokens=0)
    cost: float | msgspec.UnsetType = msgspec.UNSET if usage.cost_usd is None else usage.cost_usd
    return MessageUsage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost=cost
    )


def _tool_input(call: ToolCall) -> tuple[dict[str, Any], str | None]:
    """A call's arguments as the object ``tool_use.input`` must be, or ``{}`` and a note saying
    what was wrong with them (a model's broken JSON is its mistake, not a reason to crash)."""
    arguments = call.function.arguments
    if not arguments.strip():
        return {}, None
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed, None
    shown = arguments if len(arguments) <= 200 else arguments[:200] + "…"
    note = (
        f"[fusion: the arguments of the {call.function.name} call were not a JSON object "
        f"and were replaced by {{}}: {shown}]"
    )
    return {}, note


def message_of(answer: ChatAnswer, *, model: str, message_id: str) -> AnthropicMessage:
    """The ``message`` for a whole answer; ``model`` as the client wrote it."""
    content: list[ContentBlock] = []
    notes: list[str] = []
    tool_blocks: list[ContentBlock] = []
    for call in answer.tool_calls:
        tool_input, note = _tool_input(call)
        if note:
            notes.append(note)
        tool_blocks.append(
            ToolUseContent(id=tool_use_id(call.id), name=call.function.name, input=tool_input)
        )
    text = "\n\n".join([answer.text or "", *notes]).strip("\n") if notes else answer.text
    if text:
        content.append(TextContent(text=text))
    content.extend(tool_blocks)
    return AnthropicMessage(
        id=message_id,
        model=model,
        content=content,
        stop_reason=stop_reason_of(answer.finish_reason, bool(answer.tool_calls)),
        usage=_usage(answer.usage),
        fusion=msgspec.UNSET if answer.fusion is None else answer.fusion,
    )


# --- streams -------------------------------------------------------------------------------------


class MessageStartEvent(msgspec.Struct, frozen=True, tag="message_start", tag_field="type"):
    message: AnthropicMessage


class ContentBlockStartEvent(
    msgspec.Struct, frozen=True, tag="content_block_start", tag_field="type"
):
    index: int
    content_block: ContentBlock


class TextDelta(msgspec.Struct, frozen=True, tag="text_delta", tag_field="type"):
    text: str


class InputJsonDelta(msgspec.Struct, frozen=True, tag="input_json_delta", tag_field="type"):
    partial_json: str


class ContentBlockDeltaEvent(
    msgspec.Struct, frozen=True, tag="content_block_delta", tag_field="type"
):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStopEvent(
    msgspec.Struct, frozen=True, tag="content_block_stop", tag_field="type"
):
    index: int


class StopDelta(msgspec.Struct, frozen=True):
    stop_reason: str
    stop_sequence: str | None = None


class MessageDeltaEvent(msgspec.Struct, frozen=True, tag="message_delta", tag_field="type"):
    delta: StopDelta
    usage: MessageUsage
    fusion: Any | msgspec.UnsetType = msgspec.UNSET


class MessageStopEvent(msgspec.Struct, frozen=True, tag="message_stop", tag_field="type"):
    pass


class PingEvent(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    pass


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
)

_encode = msgspec.json.Encoder().encode
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def _event(name: str, event: StreamEvent | dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(event) + b"\n\n"


class MessageStreamRenderer(HoldsTheEnd):
    """One streamed answer as Anthropic's SSE events (a ``chat_stream.StreamRenderer``).

    Blocks are opened as their first piece arrives and closed when another block begins or
    the stream ends; a tool call's input travels only as ``input_json_delta`` fragments, relayed
    as they come once they begin a JSON object. Input that begins otherwise (a model's broken
    arguments: ``[1, 2]``, prose) is held until its block closes and left out unless it is an
    object after all, so the client sees ``input: {}`` as in a JSON reply instead of JSON its
    SDK cannot parse.

    Args:
        model: the model id as the client wrote it.
        message_id: the ``msg_…`` id of the message.
        input_tokens: the input estimate ``message_start`` reports before the real count,
            which ``message_delta`` carries, is known.
    """

    def __init__(self, *, model: str, message_id: str, input_tokens: int = 0) -> None:
        self._model = model
        self._message_id = message_id
        self._input_tokens = input_tokens
        self._blocks = 0  # blocks started so far; the next block's index
        self._open: tuple[str, int] | None = None  # ("text", -1) or ("tool", call index)
        self._tool_blocks: dict[int, int] = {}  # tool call index → its block index
        #: fragments of the open tool call held until they show they begin a JSON object
        self._held: dict[int, list[str]] = {}
        self._refused: set[int] = set()  # held calls whose input begins with no ``{``
        self._finish_reason: str | None = None
        self._fusion: Any = None
        self._usage: TokenUsage | None = None

    def open(self) -> bytes:
        message = AnthropicMessage(
            id=self._message_id,
            model=self._model,
            content=[],
            stop_reason=None,
            usage=MessageUsage(input_tokens=self._input_tokens, output_tokens=0),
        )
        return _event("message_start", MessageStartEvent(message=message))

    def progress(self, finished: int, total: int) -> bytes:
        return _PING

    def keepalive(self) -> bytes:
        return _PING

    def text(self, delta: str) -> bytes:
        if not delta:
            return b""
        out = b""
        if self._open != ("text", -1):
            out += self._start(("text", -1), TextContent(text=""))
        delta_event = ContentBlockDeltaEvent(index=self._blocks - 1, delta=TextDelta(text=delta))
        return out + _event("content_block_delta", delta_event)

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        if index not in self._tool_blocks:
            block = ToolUseContent(id=tool_use_id(call_id), name=name or "", input={})
            out += self._start(("tool", index), block)
            self._tool_blocks[index] = self._blocks - 1
            self._held[index] = []
        if index in self._held and self._open == ("tool", index):
            held = self._held[index]
            held.append(arguments)
            # Everything held before is whitespace unless the call was already refused.
            if index in self._refused or not arguments.strip():
                return out
            if not arguments.lstrip().startswith("{"):
                self._refused.add(index)  # no JSON object: decided when the block closes
                return out
            del self._held[index]
            arguments = "".join(held)
        # A fragment of a call whose block another block already closed (providers send calls
        # one after the other, so this is rare) still goes to its own block index.
        if arguments:
            fragment = InputJsonDelta(partial_json=arguments)
            delta_event = ContentBlockDeltaEvent(index=self._tool_blocks[index], delta=fragment)
            out += _event("content_block_delta", delta_event)
        return out

    def close(self) -> bytes:
        stop_reason = stop_reason_of(self._finish_reason, bool(self._tool_blocks))
        delta_event = MessageDeltaEvent(
            delta=StopDelta(stop_reason=stop_reason),
            usage=_usage(self._usage, self._input_tokens),
            fusion=msgspec.UNSET if self._fusion is None else self._fusion,
        )
        return (
            self._stop()
            + _event("message_delta", delta_event)
            + _event("message_stop", MessageStopEvent())
        )

    def fail(self, failure: StreamFailure) -> bytes:
        # Claude Code keeps the text so far and retries with a "resume" reminder.
        return _event("error", error_body(failure.status, failure.message))

    def _start(self, which: tuple[str, int], block: ContentBlock) -> bytes:
        out = self._stop()
        self._open = which
        start_event = ContentBlockStartEvent(index=self._blocks, content_block=block)
        self._blocks += 1
        return out + _event("content_block_start", start_event)

    def _stop(self) -> bytes:
        if self._open is None:
            return b""
        kind, index = self._open
        self._open = None
        out = b""
        if kind == "tool" and index in self._held:
            arguments = "".join(self._held.pop(index))
            _, note = _tool_input(ToolCall(id="", function=FunctionCall("", arguments)))
            if arguments.strip() and note is None:
                fragment = InputJsonDelta(partial_json=arguments)
                delta_event = ContentBlockDeltaEvent(index=self._blocks - 1, delta=fragment)
                out += _event("content_block_delta", delta_event)
        return out + _event("content_block_stop", ContentBlockStopEvent(index=self._blocks - 1))
