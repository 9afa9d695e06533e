"""One pipeline for every API: a chat-completions request, fused or passed through, answered in
the form of the API the client speaks.

``/v1/chat/completions`` hands its body here as it came; ``/v1/responses`` and ``/v1/messages``
hand the chat-completions body their translation made, with an ``AnswerApi`` that renders the
answer in their own form. Parsing, planning, cache, the fusion slot, streaming, degradation and
the log and metric facts are the same for all three.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response

from ..cache import scope_for
from ..chat_stream import AnswerApi, ChatAnswer, StreamRenderer
from ..errors import FusionError, InvalidRequestError
from ..plan import FusionPlan, PanelArg, panel_of_model
from ..protocol import GenerationParams, split_validation_error
from ..ratelimit import Lease
from ..results import FusionResult
from .admission import CHAT_SHAPE, Admitted, check_lists
from .errors import json_response
from .gateway import Gateway, gateway_of
from .observe import facts_of, record_result, server_timing_now, trace_fusion
from .passthrough import passthrough
from .request_id import new_id
from .runs import until_disconnect
from .schema import (
    CHAT_REQUEST_FIELDS,
    AssistantMessage,
    ChatCompletionOut,
    ChatRequest,
    CompletionChoice,
    FusionOptions,
    check_fused_request,
    fused_headers,
)
from .streaming import ChatRenderer, StreamSpec, answer_of, fused_stream, usage_out


class ChatApi:
    """Chat completions' own form (an ``AnswerApi``) for fused answers; passed-through chat
    answers are relayed as the provider sent them instead."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self._id, self._created, self._model = f"chatcmpl-{new_id()}", int(time.time()), model
        self._include_usage = include_usage

    def renderer(self) -> StreamRenderer:
        return ChatRenderer(
            completion_id=self._id, created=self._created, model=self._model,
            include_usage=self._include_usage,
        )  # fmt: skip

    def reply(self, answer: ChatAnswer) -> ChatCompletionOut:
        # Fused answers (the only ones rendered here) carry usage and the fusion detail.
        assert answer.usage is not None
        message = AssistantMessage(
            content=answer.text, tool_calls=answer.tool_calls or msgspec.UNSET
        )
        choice = CompletionChoice(message=message, finish_reason=answer.finish_reason or "stop")
        return ChatCompletionOut(
            id=self._id, created=self._created, model=self._model, choices=[choice],
            usage=usage_out(answer.usage), fusion=answer.fusion,
        )  # fmt: skip

    async def answered(self, answer: ChatAnswer) -> None:
        return None


async def serve_chat(
    request: Request[Any, Any, Any],
    admitted: Admitted,
    body: dict[str, Any],
    api: AnswerApi | None = None,
) -> Response[Any]:
    """Answer a chat-completions ``body``: fused for ``fusion/<panel>`` (or ``fusion-<panel>``),
    passed through otherwise; in chat completions' form, or through ``api``.

    Raises:
        FusionError: the request is invalid, refused, or failed before its reply started.
    """
    gateway = gateway_of(request)
    if api is not None:
        # Admission counted the client's own lists; the translation can hold more (a turn of
        # tool results is one Messages message but one chat message each, a Responses
        # namespace is many tools), and the limits are on what goes upstream.
        check_lists(body, CHAT_SHAPE, gateway.config.gateway.limits)
    chat = parse_chat_request(body)
    named = panel_of_model(chat.model)
    if named is None:
        await admitted.admit_passthrough(gateway, chat.model, body.get("messages"))
        return await passthrough(request, gateway, body, chat, api)
    check_fused_request(chat)
    options = chat.fusion or FusionOptions()
    plan = await admitted.admit_fusion(
        gateway,
        plan_fusion(gateway, chat, options, extra=_extra_fields(body)),
        # A judge model of the caller's choosing is choosing models too (any model, at its
        # price, even for a key without passthrough): only an ``ad-hoc`` key may.
        ad_hoc=options.models is not None or options.judge_model is not None,
    )
    facts_of(request).panel = plan.panel.name
    if api is None:
        # Named as the client wrote it (``fusion-<panel>`` stays so); an ad-hoc panel is named
        # ``<prefix>ad-hoc`` with the client's prefix.
        model = (
            chat.model
            if options.models is None
            else chat.model.removesuffix(named) + plan.panel.name
        )
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        api = ChatApi(model=model, include_usage=include_usage)
    cache_control = request.headers.get("cache-control")
    scope = scope_for(admitted.key_name, gateway.config.gateway.cache_scope)
    slot = await admitted.fusion_slot()
    if chat.stream:
        spec = StreamSpec(detail=options.detail, cache_control=cache_control, cache_scope=scope)
        return await fused_stream(
            request, gateway, plan, spec, slot=slot, renderer=api.renderer(),
            on_answer=api.answered,
        )  # fmt: skip
    result, headers = await fuse_whole(request, gateway, plan, slot, cache_control, scope)
    answer = answer_of(result, options.detail)
    await api.answered(answer)
    return json_response(api.reply(answer), headers=headers)


async def fuse_whole(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    plan: FusionPlan,
    slot: Lease,
    cache_control: str | None,
    scope: str,
) -> tuple[FusionResult, dict[str, str]]:
    """A non-streamed fusion (or its cached answer) under its fusion span, holding ``slot``
    while it runs and cancelled if the client leaves; its result and its reply headers
    (cache, degradation, ``Server-Timing``). Chat, Responses, Messages and ``/fuse`` share it.
    """
    facts = facts_of(request)
    with trace_fusion(request, plan.panel.name):
        async with slot:
            result, outcome = await until_disconnect(
                request,
                gateway.cache.run(
                    plan, lambda: gateway.engine.run(plan), cache_control=cache_control,
                    scope=scope,
                ),
            )  # fmt: skip
        record_result(facts, result, outcome)
    headers = fused_headers(result, outcome)
    headers["Server-Timing"] = server_timing_now(facts, result)
    return result, headers


def parse_chat_request(raw: dict[str, Any]) -> ChatRequest:
    """The typed view of a chat request, with each type error naming its field.

    Raises:
        InvalidRequestError: a field is missing or of the wrong type.
    """
    try:
        chat = msgspec.convert(raw, ChatRequest)
    except msgspec.ValidationError as exc:
        field, problem = split_validation_error(str(exc))
        raise InvalidRequestError(f"{field}: {problem}" if field else problem, param=field) from exc
    if chat.stream_options is not None and not chat.stream:
        raise InvalidRequestError(
            "stream_options is only allowed with stream: true", param="stream_options"
        )
    if not chat.messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    return chat


def plan_fusion(
    gateway: Gateway, chat: ChatRequest, options: FusionOptions, *, extra: dict[str, Any]
) -> FusionPlan:
    """Resolve the request into a fusion plan (errors carry the request's field names)."""
    panel: PanelArg = chat.model
    if options.models is not None:
        panel = options.models
    params = GenerationParams.from_fields(chat, extra)
    try:
        return gateway.engine.plan(
            chat.messages,
            panel=panel,
            judge_model=options.judge_model,
            judge_template=options.judge_template,
            web_search=options.web_search,
            params=params,
        )
    except FusionError as error:
        if error.param == "panel":
            error.param = "model"
        raise


def _extra_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Fields the gateway does not read, forwarded to every call unchanged."""
    return {key: value for key, value in raw.items() if key not in CHAT_REQUEST_FIELDS}
