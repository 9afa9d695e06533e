"""The OpenAI Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE
/v1/responses/{id}``.

``POST`` translates the request to chat completions (``responses_api``), prepends the stored
conversation of ``previous_response_id``, and hands it to the one answer pipeline
(``serve_chat``) with an ``AnswerApi`` that renders the answer as a ``response`` — and stores
it, unless ``store: false``, for the caller's key name only.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post

from ..chat_stream import ChatAnswer, StreamRenderer
from ..errors import PayloadTooLargeError
from ..response_store import (
    ResponseStore,
    StoredResponse,
    previous_not_found,
    response_not_found,
)
from ..responses_api import (
    DeletedResponse,
    ResponseObject,
    ResponsesStream,
    Translation,
    assistant_message,
    parse_request,
    translate,
)
from .admission import BodyShape, admit
from .answers import serve_chat
from .errors import json_response
from .gateway import gateway_of
from .openapi import deleted_response_operation, stored_response_operation

_encode = msgspec.json.Encoder().encode
#: Where a Responses body keeps the lists admission limits.
RESPONSES_SHAPE = BodyShape(messages="input")
#: Names the tools the gateway left out of a request (types it cannot serve).
WARNING_HEADER = "X-Fusion-Warning"


class ResponsesAnswers:
    """The Responses API's ``AnswerApi`` for one request: every rendering shares the
    response's id, and a successful answer is stored for the caller (unless ``store: false``)."""

    def __init__(self, translation: Translation, store: ResponseStore | None, owner: str) -> None:
        self._translation = translation
        self._store = store
        self._owner = owner
        #: The answer ``answered`` saw and its response's JSON (the reply reuses it).
        self._answered: tuple[ChatAnswer, msgspec.Raw] | None = None

    def renderer(self) -> StreamRenderer:
        return ResponsesStream(self._translation.context)

    def reply(self, answer: ChatAnswer) -> msgspec.Raw | ResponseObject:
        if self._answered is not None and self._answered[0] is answer:
            return self._answered[1]
        return self._translation.context.response_of(answer)

    async def answered(self, answer: ChatAnswer) -> None:
        response = msgspec.Raw(_encode(self._translation.context.response_of(answer)))
        self._answered = (answer, response)
        if self._store is None:
            return
        stored = StoredResponse(
            response=response,
            conversation=[*self._translation.conversation, assistant_message(answer)],
        )
        await self._store.save(self._owner, self._translation.context.id, stored)


@post(
    "/v1/responses",
    status_code=200,
    summary="OpenAI Responses API: create a response (fused or passed through)",
)
async def create_response(request: Request[Any, Any, Any]) -> Response[Any]:
    """Answer a Responses request, fused for ``fusion/<panel>`` (or ``fusion-<panel>``),
    passed through for any other model; JSON, or SSE with ``stream: true``."""
    admitted = await admit(request, RESPONSES_SHAPE)
    gateway = gateway_of(request)
    parsed = parse_request(admitted.body)
    history = None
    if parsed.previous_response_id is not None:
        previous = await gateway.responses.load(admitted.key_name, parsed.previous_response_id)
        if previous is None:
            raise previous_not_found(parsed.previous_response_id)
        history = previous.conversation
    translation = translate(parsed, history=history)
    if history:
        limits = gateway.config.gateway.limits
        _check_conversation(translation, limits.max_messages, limits.max_body_bytes)
    store = gateway.responses if parsed.store else None
    api = ResponsesAnswers(translation, store, admitted.key_name)
    response = await serve_chat(request, admitted, translation.chat_body, api)
    if translation.ignored_tools:
        response.headers[WARNING_HEADER] = "ignored tool types: " + ", ".join(
            sorted(set(translation.ignored_tools))
        )
    return response


def _check_conversation(translation: Translation, limit: int, max_bytes: int) -> None:
    """Refuse a conversation that grew over the message or body size limit through stored
    turns (admission measured only this request's own body)."""
    count = len(translation.conversation)
    if count > limit:
        raise PayloadTooLargeError(
            f"the conversation (the stored turns of previous_response_id and this input) has "
            f"{count} messages, over the limit of {limit}",
            param="previous_response_id",
        )
    size = len(_encode(translation.conversation))
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the conversation (the stored turns of previous_response_id and this input) is "
            f"{size} bytes, over the limit of {max_bytes}",
            param="previous_response_id",
        )


@get(
    "/v1/responses/{response_id:str}",
    summary="OpenAI Responses API: a stored response",
    operation_class=stored_response_operation(),
)
async def retrieve_response(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
    """A response this caller's key name stored (404 for any other)."""
    admitted = await admit(request, read_body=False)
    stored = await gateway_of(request).responses.load(admitted.key_name, response_id)
    if stored is None:
        raise response_not_found(response_id)
    return json_response(stored.response)


@delete(
    "/v1/responses/{response_id:str}",
    status_code=200,
    summary="OpenAI Responses API: delete a stored response",
    operation_class=deleted_response_operation(),
)
async def delete_response(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
    """Forget a response this caller's key name stored (404 for any other)."""
    admitted = await admit(request, read_body=False)
    if not await gateway_of(request).responses.delete(admitted.key_name, response_id):
        raise response_not_found(response_id)
    return json_response(DeletedResponse(id=response_id))
