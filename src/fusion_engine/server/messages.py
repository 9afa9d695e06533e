"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API.

A thin adapter: ``messages_api`` translates the request to chat completions and the answer back,
and ``serve_chat`` does everything else exactly as for ``/v1/chat/completions`` (fused or passed
through, streamed or not, cache, admission, degradation, disconnects). Errors on these paths
take Anthropic's shape (``errors.speaks_anthropic``). Claude Code's ``?beta=true`` and its
``anthropic-version``/``anthropic-beta`` headers are accepted and need nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post

from ..chat_stream import ChatAnswer
from ..messages_api import (
    AnthropicMessage,
    MessageStreamRenderer,
    chat_body_of,
    count_tokens,
    estimate_input_tokens,
    message_id,
    message_of,
)
from .admission import admit
from .answers import serve_chat
from .errors import json_response


class MessagesApi:
    """Anthropic's form of one answer (an ``AnswerApi``)."""

    def __init__(self, *, chat_body: dict[str, Any]) -> None:
        self._chat_body = chat_body
        self._model: str = chat_body["model"]
        self._id = message_id()

    def renderer(self) -> MessageStreamRenderer:
        # Only a stream needs the estimate: message_start names input tokens before any
        # provider has counted them.
        body = self._chat_body
        estimate = estimate_input_tokens(body["messages"], body.get("tools"))
        return MessageStreamRenderer(model=self._model, message_id=self._id, input_tokens=estimate)

    def reply(self, answer: ChatAnswer) -> AnthropicMessage:
        return message_of(answer, model=self._model, message_id=self._id)

    async def answered(self, answer: ChatAnswer) -> None:
        return None  # the Messages API keeps nothing


class TokenCount(msgspec.Struct, frozen=True):
    """``count_tokens``'s reply."""

    input_tokens: int


@post("/v1/messages", status_code=200, summary="Anthropic Messages API")
async def create_message(request: Request[Any, Any, Any]) -> Response[Any]:
    """Fuse a panel's answers for ``fusion/<panel>`` (or ``fusion-<panel>``); pass any other
    model through (to the passthrough provider's chat completions); answer as Anthropic does."""
    admitted = await admit(request)
    chat_body = chat_body_of(admitted.body)
    return await serve_chat(request, admitted, chat_body, MessagesApi(chat_body=chat_body))


@post("/v1/messages/count_tokens", status_code=200, summary="Estimate a Messages request's tokens")
async def count_message_tokens(request: Request[Any, Any, Any]) -> Response[Any]:
    """An estimate of the request's input tokens (characters over 3.5; no tokenizer)."""
    admitted = await admit(request)
    return json_response(TokenCount(input_tokens=count_tokens(admitted.body)))
