"""The OpenAI Responses API (``POST /v1/responses``) to and from the gateway's chat-completions
form. Pure: no Litestar, no aiohttp.

One direction turns a Responses request into the chat-completions body every other route
serves (``translate``); the other renders the gateway's answer (``ChatAnswer``, or its parts
when streamed) as a ``response`` object (``ResponseContext.response_of``) or as the Responses
API's SSE events (``ResponsesStream``). Fusion, passthrough, cache, admission and errors stay
one pipeline whichever API the client speaks.

What real agents send (recorded in ``tests/fixtures/agent_recordings``; see
``docs/compatibility.md``): Codex sends ``developer`` messages with item
``id``s, ``reasoning`` items carrying another provider's ``encrypted_content`` (dropped: the
gateway's models could not read it, and it must not leak to them), ``namespace`` tools (flattened
into plain functions named ``<namespace>__<name>``, and given back in the namespaced form) and a
``web_search`` tool with ``external_web_access: false`` on every turn (meaning: no web search).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Literal, TypeVar

import msgspec

from .chat_stream import ChatAnswer, HoldsTheEnd, StreamFailure, TokenUsage
from .errors import InvalidRequestError
from .plan import panel_of_model
from .protocol import FunctionCall, Message, PositiveInt, ToolCall, split_validation_error

T = TypeVar("T")
#: A tool type name fit to be named in a response header.
_TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: Separates a namespace from its tool's name in the flat chat-completions function name.
NAMESPACE_SEPARATOR = "__"

# --- the request --------------------------------------------------------------------------


class TextFormat(msgspec.Struct, frozen=True, kw_only=True):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (with its schema fields)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``text``: the output format (``verbosity`` and other fields are accepted, not used)."""

    format: TextFormat | None = None


class ResponsesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of ``POST /v1/responses`` the gateway reads. Unknown fields are tolerated;
    ``metadata``, ``include``, ``reasoning``, ``store``, ``prompt_cache_key`` and
    ``client_metadata`` are accepted and never forwarded upstream as they are."""

    model: str
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    client_metadata: dict[str, Any] | None = None
    user: str | None = None
    #: The gateway's own options (the openai SDK's ``extra_body``), as on chat completions.
    fusion: dict[str, Any] | None = None


class InputText(msgspec.Struct, frozen=True, tag_field="type", tag="input_text"):
    """A text part the client wrote."""

    text: str


class OutputTextPart(msgspec.Struct, frozen=True, tag_field="type", tag="output_text"):
    """A text part of an earlier answer (annotations, logprobs are ignored)."""

    text: str


class RefusalPart(msgspec.Struct, frozen=True, tag_field="type", tag="refusal"):
    """A refusal of an earlier answer (kept as its text)."""

    refusal: str


class InputImage(msgspec.Struct, frozen=True, tag_field="type", tag="input_image"):
    """An image by URL (``data:`` URLs included); uploaded files (``file_id``) are refused."""

    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


ContentPart = InputText | OutputTextPart | RefusalPart | InputImage


class MessageItem(msgspec.Struct, frozen=True, kw_only=True):
    """A ``message`` item (``type`` may be missing, as the Agents SDK sends it); ``id`` and
    ``status`` are accepted."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(msgspec.Struct, frozen=True, kw_only=True):
    """A ``function_call`` item of an earlier answer."""

    call_id: str
    name: str
    arguments: str = ""
    namespace: str | None = None


class FunctionCallOutputItem(msgspec.Struct, frozen=True, kw_only=True):
    """A ``function_call_output`` item: a tool's result (text, or text and image parts)."""

    call_id: str
    output: str | list[ContentPart]


class Translation(msgspec.Struct, frozen=True, kw_only=True):
    """A Responses request in chat-completions form.

    ``conversation`` is what is stored for a later ``previous_response_id``: the earlier
    conversation and this input, without ``instructions`` (which, as in OpenAI's API, are not
    carried over to the next turn); ``chat_body`` has the instructions first.
    """

    chat_body: dict[str, Any]
    conversation: list[Message]
    #: Tool types the gateway cannot serve and left out (for a warning header).
    ignored_tools: list[str]
    context: ResponseContext


def parse_request(raw: dict[str, Any]) -> ResponsesRequest:
    """The typed view of a Responses request, each type error naming its field.

    Raises:
        InvalidRequestError: a field is missing or of the wrong type.
    """
    try:
        return msgspec.convert(raw, ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, "") from exc


def translate(
    request: ResponsesRequest,
    *,
    history: list[Message] | None = None,
    response_id: str | None = None,
    created_at: int | None = None,
) -> Translation:
    """The chat-completions body of a Responses request, after ``history`` (the stored
    conversation of ``previous_response_id``).

    Raises:
        InvalidRequestError: with ``param`` naming the Responses field at fault.
    """
    tools, namespaced, ignored, web_search = _tools_of(request.tools or [])
    flat_names = {tool["function"]["name"] for tool in tools}
    conversation = list(history or [])
    conversation.extend(_messages_of(request.input))
    messages: list[Message] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages.extend(conversation)
    if not messages:
        raise InvalidRequestError("'input' must contain at least one item", param="input")
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if tools:
        body["tools"] = tools
        choice = _tool_choice(request.tool_choice, flat_names)
        if choice is not None:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    response_format = _response_format(request.text)
    optional = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "response_format": response_format,
        "user": request.user,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if panel_of_model(request.model) is not None:
        fusion = dict(request.fusion or {})
        if web_search and "web_search" not in fusion:
            fusion["web_search"] = True
        if fusion:
            body["fusion"] = fusion
    elif web_search:
        # A passed-through model gets what chat completions can say: no hosted web search.
        ignored.append("web_search")
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    started = _started_response(
        request,
        response_id or new_response_id(),
        created_at if created_at is not None else int(time.time()),
    )
    context = ResponseContext(started=started, namespaced=namespaced)
    return Translation(
        chat_body=body, conversation=conversation, ignored_tools=ignored, context=context
    )


def new_response_id() -> str:
    """A fresh ``resp_…`` id."""
    return "resp_" + secrets.token_hex(16)


def _invalid(exc: msgspec.ValidationError, prefix: str) -> InvalidRequestError:
    field, problem = split_validation_error(str(exc))
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return InvalidRequestError(f"{field}: {problem}" if field else problem, param=field)


def _messages_of(items: str | list[Any]) -> list[Message]:
    """The chat messages of ``input``: a string is one user message; items are translated in
    order, consecutive function calls joining the assistant message before them."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Message] = []
    #: Images of the tool outputs just translated: chat's tool messages take text only, so
    #: they follow the turn's tool messages as one user message.
    images: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        where = f"input[{position}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if images and kind != "function_call_output":
            messages.append({"role": "user", "content": images})
            images = []
        if kind == "message":
            message = _convert(item, MessageItem, where)
            messages.append(_chat_message(message, where))
        elif kind == "function_call":
            call = _convert(item, FunctionCallItem, where)
            _add_tool_call(messages, call)
        elif kind == "function_call_output":
            output = _convert(item, FunctionCallOutputItem, where)
            content = output.output
            if not isinstance(content, str):
                content = _tool_output_text(_chat_parts(content, f"{where}.output"), images)
            messages.append({"role": "tool", "tool_call_id": output.call_id, "content": content})
        elif kind == "reasoning":
            # Another model's reasoning (often encrypted for its provider only): dropped, so
            # it never reaches the gateway's models.
            continue
        else:
            raise InvalidRequestError(
                f"{where}.type {kind!r} is not supported here: send message, function_call, "
                "function_call_output or reasoning items",
                param=f"{where}.type",
            )
    if images:
        messages.append({"role": "user", "content": images})
    return messages


def _tool_output_text(parts: list[dict[str, Any]], images: list[dict[str, Any]]) -> str:
    """A tool output's text, each image replaced by a note (the image itself is moved to
    ``images``)."""
    texts: list[str] = []
    for part in parts:
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
            texts.append(f"[image {len(images)} of these results follows in the next message]")
    return "\n\n".join(texts)


def _convert(item: dict[str, Any], kind: type[T], where: str) -> T:
    try:
        return msgspec.convert(item, kind)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, where) from exc


def _chat_message(message: MessageItem, where: str) -> Message:
    # ``developer`` is the system role of OpenAI's newer models; chat upstreams at large know
    # only ``system``.
    role = "system" if message.role == "developer" else message.role
    content = message.content
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = _chat_parts(content, f"{where}.content")
    if all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "\n".join(part["text"] for part in parts)}
    if role != "user":
        raise InvalidRequestError(
            f"{where}.content: images are only allowed in user messages",
            param=f"{where}.content",
        )
    return {"role": role, "content": parts}


def _chat_parts(parts: list[ContentPart], where: str) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for position, part in enumerate(parts):
        if isinstance(part, InputText | OutputTextPart):
            chat.append({"type": "text", "text": part.text})
        elif isinstance(part, RefusalPart):
            chat.append({"type": "text", "text": part.refusal})
        else:
            if part.image_url is None:
                raise InvalidRequestError(
                    f"{where}[{position}]: only images given by image_url are supported "
                    "(not file_id)",
                    param=f"{where}[{position}].image_url",
                )
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail is not None:
                image["detail"] = part.detail
            chat.append({"type": "image_url", "image_url": image})
    return chat


def _add_tool_call(messages: list[Message], call: FunctionCallItem) -> None:
    name = flat_name(call.namespace, call.name) if call.namespace else call.name
    tool_call = {
        "id": call.call_id,
        "type": "function",
        "function": {"name": name, "arguments": call.arguments},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(tool_call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})


def flat_name(namespace: str, name: str) -> str:
    """The chat function name of tool ``name`` of ``namespace``."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}"


def _tools_of(
    tools: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]], list[str], bool]:
    """The chat tools, the flat names of namespaced tools, the ignored tool types, and whether
    web search is on."""
    chat: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}
    ignored: list[str] = []
    web_search = False
    for position, tool in enumerate(tools):
        where = f"tools[{position}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        kind = tool.get("type")
        if kind == "function":
            chat.append(_function_tool(tool, where))
        elif kind == "namespace":
            namespace = tool.get("name")
            if not isinstance(namespace, str) or not namespace:
                raise InvalidRequestError(f"{where}.name is required", param=f"{where}.name")
            inner = tool.get("tools")
            for index, member in enumerate(inner if isinstance(inner, list) else []):
                if not isinstance(member, dict) or member.get("type") != "function":
                    ignored.append(_type_name(member))
                    continue
                function = _function_tool(member, f"{where}.tools[{index}]")
                name = function["function"]["name"]
                flat = flat_name(namespace, name)
                function["function"]["name"] = flat
                namespaced[flat] = (namespace, name)
                chat.append(function)
        elif kind in ("web_search", "web_search_preview", "web_search_2025_08_26"):
            # Codex sends ``external_web_access: false`` on every turn: it means "off".
            web_search = web_search or tool.get("external_web_access") is not False
        else:
            ignored.append(_type_name(tool))
    # A call to a flat name must map back to one tool only.
    names = [tool["function"]["name"] for tool in chat]
    clashes = sorted({name for name in namespaced if names.count(name) > 1})
    if clashes:
        raise InvalidRequestError(
            f"tools: the function {clashes[0]!r} clashes with a namespaced tool (namespaced "
            f"tools are named <namespace>{NAMESPACE_SEPARATOR}<name> here)",
            param="tools",
        )
    return chat, namespaced, ignored, web_search


def _type_name(tool: object) -> str:
    """A tool's type as it may appear in a header (the client wrote it: anything else is
    ``unknown``)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    return kind if isinstance(kind, str) and _TYPE_NAME.fullmatch(kind) else "unknown"


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"{where}.name is required", param=f"{where}.name")
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    elif not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"{where}.parameters must be a JSON Schema object", param=f"{where}.parameters"
        )
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any] | None, names: set[str]) -> Any:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequestError(
                f"tool_choice must be auto, none, required or an object, not {choice!r}",
                param="tool_choice",
            )
        return choice
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if isinstance(choice.get("namespace"), str) and isinstance(name, str):
            name = flat_name(choice["namespace"], name)
        if not isinstance(name, str) or name not in names:
            raise InvalidRequestError(
                f"tool_choice names {name!r}, which is not one of the function tools",
                param="tool_choice.name",
            )
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        return choice["mode"]
    # A hosted tool (web_search, file_search...) or a form chat completions cannot express:
    # the model chooses.
    return None


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    form = text.format if text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    if form.schema is None or not form.name:
        raise InvalidRequestError(
            "text.format: a json_schema format needs a name and a schema", param="text.format"
        )
    schema: dict[str, Any] = {"name": form.name, "schema": form.schema}
    if form.description is not None:
        schema["description"] = form.description
    if form.strict is not None:
        schema["strict"] = form.strict
    return {"type": "json_schema", "json_schema": schema}


# --- the response -------------------------------------------------------------------------


class OutputText(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="output_text"):
    """The text of an answer."""

    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="message"):
    """A ``message`` output item."""

    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = msgspec.field(default_factory=list)


class OutputFunctionCall(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="function_call"
):
    """A ``function_call`` output item; ``namespace`` only for a namespaced tool."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]
    namespace: str | msgspec.UnsetType = msgspec.UNSET


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens (and, when every call reported it, the cost in USD) of the whole answer."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int
    cost: float | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def of(cls, usage: TokenUsage) -> ResponseUsage:
        return cls(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens,
            cost=msgspec.UNSET if usage.cost_usd is None else usage.cost_usd,
        )


class IncompleteDetails(msgspec.Struct, frozen=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a response failed. ``code`` is one of the Responses API's codes (clients check
    it against a closed list); the gateway's own error type is in ``type``."""

    code: Literal["server_error", "rate_limit_exceeded"]
    message: str
    type: str | None = None


Status = Literal["in_progress", "completed", "incomplete", "failed"]


class ResponseObject(msgspec.Struct, frozen=True, kw_only=True):
    """A ``response`` object, as ``POST``/``GET /v1/responses`` answer and the stream's
    ``response.*`` events carry. ``fusion`` only on fused replies."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    completed_at: int | None = None
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    tools: list[Any] = msgspec.field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    text: dict[str, Any] = msgspec.field(default_factory=dict)
    reasoning: dict[str, Any] | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    fusion: Any | msgspec.UnsetType = msgspec.UNSET


def _started_response(
    request: ResponsesRequest, response_id: str, created_at: int
) -> ResponseObject:
    """The ``response`` object as it starts (in progress, no output yet), repeating the request
    fields a response echoes (the SDKs read them back); every later state is a copy of it."""
    text = msgspec.to_builtins(request.text) if request.text is not None else None
    if not text or "format" not in text:
        text = {**(text or {}), "format": {"type": "text"}}
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        model=request.model,
        instructions=request.instructions,
        tools=list(request.tools or []),
        tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
        parallel_tool_calls=(
            request.parallel_tool_calls if request.parallel_tool_calls is not None else True
        ),
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.max_output_tokens,
        previous_response_id=request.previous_response_id,
        store=request.store,
        metadata=dict(request.metadata or {}),
        text=text,
        reasoning=request.reasoning,
    )


class DeletedResponse(msgspec.Struct, frozen=True):
    """The reply of ``DELETE /v1/responses/{id}``."""

    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


def _incomplete_of(finish_reason: str | None) -> IncompleteDetails | None:
    if finish_reason == "length":
        return IncompleteDetails("max_output_tokens")
    if finish_reason == "content_filter":
        return IncompleteDetails("content_filter")
    return None


class ResponseContext(msgspec.Struct, frozen=True, kw_only=True):
    """What every rendering of one response shares: the response as it started (its id, when
    it was created, the model as the client wrote it, the echoed request fields) and how
    flattened tool names map back."""

    started: ResponseObject
    #: flat chat function name -> (namespace, tool name).
    namespaced: dict[str, tuple[str, str]] = msgspec.field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.started.id

    def response(
        self,
        status: Status,
        output: list[OutputItem],
        *,
        usage: TokenUsage | None = None,
        incomplete: IncompleteDetails | None = None,
        error: ResponseError | None = None,
        fusion: Any = None,
    ) -> ResponseObject:
        """The ``response`` object in state ``status``."""
        return msgspec.structs.replace(
            self.started,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            output=output,
            error=error,
            incomplete_details=incomplete,
            usage=ResponseUsage.of(usage) if usage is not None else None,
            fusion=msgspec.UNSET if fusion is None else fusion,
        )

    def item_id(self, prefix: str, output_index: int) -> str:
        """The id of output item ``output_index`` (``msg_…``, ``fc_…``): derived from the
        response's, so a streamed answer and the response stored from it agree."""
        return f"{prefix}_{self.id.removeprefix('resp_')}_{output_index}"

    def response_of(self, answer: ChatAnswer) -> ResponseObject:
        """The whole ``response`` object of a non-streamed answer."""
        incomplete = _incomplete_of(answer.finish_reason)
        item_status: Literal["completed", "incomplete"] = (
            "incomplete" if incomplete else "completed"
        )
        output: list[OutputItem] = []
        if answer.text:
            output.append(
                OutputMessage(
                    id=self.item_id("msg", 0),
                    status=item_status,
                    content=[OutputText(text=answer.text)],
                )
            )
        # Numbered from where the calls start (``len(output)`` grows while a generator fills
        # it), as the stream numbers them.
        first_call = len(output)
        output.extend(
            self.function_call_of(call, item_id=self.item_id("fc", first_call + position))
            for position, call in enumerate(answer.tool_calls)
        )
        return self.response(
            "incomplete" if incomplete else "completed",
            output,
            usage=answer.usage,
            incomplete=incomplete,
            fusion=answer.fusion,
        )

    def function_call_of(
        self,
        call: ToolCall,
        *,
        item_id: str | None = None,
        status: Literal["in_progress", "completed", "incomplete"] = "completed",
    ) -> OutputFunctionCall:
        """A ``function_call`` item, a flattened namespaced tool named as its namespace's."""
        name = call.function.name
        namespace: str | msgspec.UnsetType = msgspec.UNSET
        if name in self.namespaced:
            namespace, name = self.namespaced[name]
        return OutputFunctionCall(
            id=item_id or self.item_id("fc", 0),
            call_id=call.id,
            name=name,
            arguments=call.function.arguments,
            status=status,
            namespace=namespace,
        )


def assistant_message(answer: ChatAnswer) -> Message:
    """The answer as the chat-completions assistant message stored for the next turn."""
    message: Message = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = [msgspec.to_builtins(call) for call in answer.tool_calls]
    return message


# --- streaming ----------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


class _StreamItem:
    """An output item being streamed: its id, kind and what has arrived so far."""

    __slots__ = ("arguments", "call_id", "id", "kind", "name", "output_index", "text")

    def __init__(
        self, kind: Literal["message", "function_call"], item_id: str, output_index: int
    ) -> None:
        self.kind = kind
        self.id = item_id
        #: Its place in ``output`` (every event about it names it).
        self.output_index = output_index
        self.text: list[str] = []
        self.call_id = ""
        self.name = ""
        self.arguments: list[str] = []


class ResponsesStream(HoldsTheEnd):
    """A ``StreamRenderer`` for the Responses API's SSE events (``event:`` and ``data:``
    lines, every event with its ``sequence_number``).

    Each item opens with ``response.output_item.added`` before its deltas; at ``close`` every
    item gets its ``.done`` events and ``response.output_item.done`` with the whole item
    (Codex reads items only from there), then ``response.completed`` carries the whole
    response (the Agents SDK reads only that) — or ``response.incomplete`` when the answer was
    cut by its token limit.
    """

    def __init__(self, context: ResponseContext) -> None:
        self._context = context
        self._sequence = 0
        self._items: list[_StreamItem] = []
        self._open_message: _StreamItem | None = None
        self._calls: dict[int, _StreamItem] = {}
        self._finish_reason: str | None = None
        self._fusion: Any = None
        self._usage: TokenUsage | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"

    def open(self) -> bytes:
        response = self._context.response("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def progress(self, finished: int, total: int) -> bytes:
        return f": fusion {finished}/{total}\n\n".encode()

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def text(self, delta: str) -> bytes:
        out = b""
        item = self._open_message
        if item is None:
            item = self._open_message = self._add("message", "msg")
            out += self._event(
                "response.output_item.added",
                output_index=item.output_index,
                item=OutputMessage(id=item.id, status="in_progress"),
            )
            out += self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                part=OutputText(text=""),
            )
        if not delta:
            return out
        item.text.append(delta)
        return out + self._event(
            "response.output_text.delta",
            item_id=item.id,
            output_index=item.output_index,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        item = self._calls.get(index)
        if item is None:
            # Text after a tool call belongs to a new message item.
            self._open_message = None
            item = self._calls[index] = self._add("function_call", "fc")
            item.call_id = call_id or f"call_{secrets.token_hex(12)}"
            item.name = name or ""
            out += self._event(
                "response.output_item.added",
                output_index=item.output_index,
                item=self._function_call(item, "in_progress", arguments=""),
            )
        elif name and not item.name:
            item.name = name
        if not arguments:
            return out
        item.arguments.append(arguments)
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=item.output_index,
            delta=arguments,
        )

    def close(self) -> bytes:
        incomplete = _incomplete_of(self._finish_reason)
        status: Literal["completed", "incomplete"] = "incomplete" if incomplete else "completed"
        out: list[bytes] = []
        output: list[OutputItem] = []
        for position, item in enumerate(self._items):
            done: OutputItem
            if item.kind == "message":
                text = "".join(item.text)
                out.append(
                    self._event(
                        "response.output_text.done",
                        item_id=item.id,
                        output_index=position,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                )
                out.append(
                    self._event(
                        "response.content_part.done",
                        item_id=item.id,
                        output_index=position,
                        content_index=0,
                        part=OutputText(text=text),
                    )
                )
                done = OutputMessage(id=item.id, status=status, content=[OutputText(text=text)])
            else:
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item.id,
                        output_index=position,
                        arguments="".join(item.arguments),
                    )
                )
                done = self._function_call(item, "completed")
            out.append(self._event("response.output_item.done", output_index=position, item=done))
            output.append(done)
        response = self._context.response(
            status, output, usage=self._usage, incomplete=incomplete, fusion=self._fusion
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def fail(self, failure: StreamFailure) -> bytes:
        code: Literal["server_error", "rate_limit_exceeded"] = (
            "rate_limit_exceeded" if failure.status == 429 else "server_error"
        )
        error = ResponseError(code=code, message=failure.message, type=failure.type)
        response = self._context.response("failed", [], usage=self._usage, error=error)
        return self._event("response.failed", response=response)

    def _add(self, kind: Literal["message", "function_call"], prefix: str) -> _StreamItem:
        position = len(self._items)
        item = _StreamItem(kind, self._context.item_id(prefix, position), position)
        self._items.append(item)
        return item

    def _function_call(
        self,
        item: _StreamItem,
        status: Literal["in_progress", "completed"],
        arguments: str | None = None,
    ) -> OutputFunctionCall:
        call = ToolCall(
            id=item.call_id,
            function=FunctionCall(
                name=item.name,
                arguments="".join(item.arguments) if arguments is None else arguments,
            ),
        )
        return self._context.function_call_of(call, item_id=item.id, status=status)
