"""msgspec structs for the OpenAI chat-completions wire format, and request validation.

Responses from upstreams are decoded leniently (unknown fields ignored, most fields optional)
because OpenAI-compatible servers differ in what they send. Conversation messages stay plain JSON
objects (``Message``) so every field a client sent, known to us or not, reaches the upstream intact;
``validate_messages`` checks the parts the gateway relies on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from .errors import InvalidRequestError

#: One conversation message exactly as the client sent it (a JSON object).
Message = dict[str, Any]

_AT_PATH = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `(?P<name>[^`]+)`")

#: A positive count (``n``, token limits): msgspec refuses anything else at decode, naming it.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class FunctionCall(msgspec.Struct, frozen=True):
    """The function a tool call invokes; ``arguments`` is a JSON-encoded string."""

    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, frozen=True):
    """A complete tool call, as in a non-streaming assistant message."""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Usage(msgspec.Struct, frozen=True):
    """Token counts of one call; ``cost`` is OpenRouter's charge in USD, when reported."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None


class ResponseMessage(msgspec.Struct, frozen=True):
    """The assistant message of a non-streaming choice."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning: str | None = None
    refusal: str | None = None


class ChoiceError(msgspec.Struct, frozen=True):
    """OpenRouter's per-choice error, sent with status 200 when a provider failed mid-way."""

    message: str = "the provider failed while generating"
    code: int | str | None = None


class Choice(msgspec.Struct, frozen=True):
    """One choice of a non-streaming completion."""

    message: ResponseMessage = ResponseMessage()
    index: int = 0
    finish_reason: str | None = None
    error: ChoiceError | None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """A non-streaming ``chat.completion`` response."""

    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


class FunctionCallDelta(msgspec.Struct, frozen=True):
    """A fragment of a streamed tool call's function."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A fragment of a streamed tool call; only the first fragment carries ``id`` and name."""

    index: int = 0
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


class Delta(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one streamed chunk adds to the assistant message."""

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None


class ChunkChoice(msgspec.Struct, frozen=True):
    """One choice of a streamed chunk."""

    delta: Delta = Delta()
    index: int = 0
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True):
    """A ``chat.completion.chunk``; ``error`` is set by providers that fail mid-stream."""

    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Any = None


def validate_messages(messages: object) -> list[Message]:
    """Check a conversation has the shape upstreams require.

    Returns:
        The same messages as a list of JSON objects.

    Raises:
        InvalidRequestError: with ``param`` naming the offending message and field.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise InvalidRequestError(
            "'messages' must be an array of message objects", param="messages"
        )
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    checked: list[Message] = []
    for position, message in enumerate(messages):
        checked.append(_validate_message(message, f"messages[{position}]"))
    return checked


def _validate_message(message: object, where: str) -> Message:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"{where} must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}, not {role!r}",
            param=f"{where}.role",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidRequestError(
            f"{where}.content must be a string, an array of content parts or null",
            param=f"{where}.content",
        )
    for position, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict):
            raise InvalidRequestError(
                f"{where}.content[{position}] must be a content part object, like "
                '{"type": "text", "text": "..."}',
                param=f"{where}.content[{position}]",
            )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequestError(
            f"{where}.tool_call_id is required for a tool message", param=f"{where}.tool_call_id"
        )
    if role in ("user", "system", "developer", "tool") and content is None:
        raise InvalidRequestError(f"{where}.content is required", param=f"{where}.content")
    return message


def message_text(message: Message) -> str:
    """The text of a message, joining the text parts of a content-part array."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


class GenerationFields(msgspec.Struct, frozen=True, kw_only=True):
    """The request fields besides the conversation that shape the calls (the wire names)."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None


class GenerationParams(GenerationFields, frozen=True, kw_only=True):
    """Request fields besides the conversation, routed as the design says.

    Sampling (``temperature``, ``top_p``, ``seed``) goes to members, a member's own value
    winning; ``response_format``, ``stop`` and the token limits shape the final answer, so they go
    to the judge; ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``user`` go to both.
    ``extra`` holds fields the gateway does not know, forwarded to every call unchanged.
    """

    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: GenerationFields, extra: dict[str, Any]) -> GenerationParams:
        """The parameters of a request struct that carries the generation fields."""
        values = {name: getattr(fields, name) for name in GenerationFields.__struct_fields__}
        return cls(**values, extra=extra)

    def member_fields(self) -> dict[str, Any]:
        """Fields for a member call (before the member's own overrides)."""
        return _present(
            self.extra,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            **self._shared(),
        )

    def judge_fields(self) -> dict[str, Any]:
        """Fields for the judge call."""
        return _present(
            self.extra,
            max_tokens=self.max_tokens,
            max_completion_tokens=self.max_completion_tokens,
            stop=self.stop,
            response_format=self.response_format,
            **self._shared(),
        )

    def _shared(self) -> dict[str, Any]:
        return {
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "user": self.user,
        }


def _present(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    merged = dict(base)
    merged.update({key: value for key, value in fields.items() if value is not None})
    return merged


class ChunkAccumulator:
    """Folds streamed chunks into the complete message they add up to."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, chunk: ChatCompletionChunk) -> None:
        """Take one chunk into account."""
        self.id = self.id or chunk.id
        self.model = self.model or chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                self.content.append(delta.content)
            if delta.reasoning:
                self.reasoning.append(delta.reasoning)
            for fragment in delta.tool_calls or ():
                self._add_call_fragment(fragment)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def _add_call_fragment(self, fragment: ToolCallDelta) -> None:
        call = self._calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
        # Only the first fragment should carry id and name; keep the first we see rather
        # than concatenating, so an upstream that repeats them does not corrupt the call.
        if fragment.id and not call["id"]:
            call["id"] = fragment.id
        if fragment.function is not None:
            if fragment.function.name and not call["name"]:
                call["name"] = fragment.function.name
            call["arguments"] += fragment.function.arguments or ""

    def completion(self) -> ChatCompletion:
        """The accumulated message as a non-streaming completion."""
        tool_calls = [
            ToolCall(
                id=call["id"] or f"call_{index}",
                function=FunctionCall(name=call["name"], arguments=call["arguments"]),
            )
            for index, call in sorted(self._calls.items())
        ]
        message = ResponseMessage(
            content="".join(self.content) or None,
            tool_calls=tool_calls or None,
            reasoning="".join(self.reasoning) or None,
        )
        choice = Choice(message=message, finish_reason=self.finish_reason)
        return ChatCompletion(id=self.id, model=self.model, choices=[choice], usage=self.usage)


def split_validation_error(message: str) -> tuple[str | None, str]:
    """Split msgspec's ``"Expected `int`, got `str` - at `$.a[0].b`"`` into field and problem."""
    match = _AT_PATH.match(message)
    problem = match.group("problem") if match else message
    path = (match.group("path") if match else None) or ""
    field = path.lstrip(".")
    for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD):
        named = pattern.search(problem)
        if named:
            field = f"{field}.{named.group('name')}" if field else named.group("name")
    return (field or None), problem
