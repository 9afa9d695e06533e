"""``POST /v1/chat/completions``: fused for ``fusion/<panel>``, passed through otherwise."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, post

from ..cache import scope_for
from ..errors import FusionError, InvalidRequestError
from ..plan import FusionPlan, PanelArg, panel_of_model
from ..protocol import GenerationParams, split_validation_error
from .admission import admit
from .errors import json_response
from .gateway import Gateway, gateway_of
from .observe import facts_of, record_result
from .passthrough import passthrough
from .request_id import new_id
from .runs import until_disconnect
from .schema import (
    CHAT_REQUEST_FIELDS,
    ChatRequest,
    FusionOptions,
    check_fused_request,
    completion_of,
    fused_headers,
)
from .streaming import StreamSpec, fused_stream


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="OpenAI-compatible chat completion",
)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    """Fuse a panel's answers for ``fusion/<panel>`` (or ``fusion-<panel>``); pass any other
    model through."""
    admitted = await admit(request)
    gateway = gateway_of(request)
    raw = admitted.body
    chat = parse_chat_request(raw)
    named = panel_of_model(chat.model)
    if named is None:
        return await passthrough(request, gateway, raw, chat)
    check_fused_request(chat)
    options = chat.fusion or FusionOptions()
    plan = gateway.within_budget(plan_fusion(gateway, chat, options, extra=_extra_fields(raw)))
    facts_of(request).panel = plan.panel.name
    # Named as the client wrote it (``fusion-<panel>`` stays so); an ad-hoc panel is named
    # ``<prefix>ad-hoc`` with the client's prefix.
    model = (
        chat.model if options.models is None else chat.model.removesuffix(named) + plan.panel.name
    )
    completion_id, created = f"chatcmpl-{new_id()}", int(time.time())
    cache_control = request.headers.get("cache-control")
    scope = scope_for(admitted.key_name, gateway.config.gateway.cache_scope)
    slot = await admitted.fusion_slot()
    if chat.stream:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        spec = StreamSpec(
            completion_id=completion_id, created=created, model=model,
            include_usage=include_usage, detail=options.detail, cache_control=cache_control,
            cache_scope=scope,
        )  # fmt: skip
        return await fused_stream(request, gateway, plan, spec, slot=slot)
    async with slot:
        result, outcome = await until_disconnect(
            request,
            gateway.cache.run(
                plan, lambda: gateway.engine.run(plan), cache_control=cache_control, scope=scope
            ),
        )
    record_result(facts_of(request), result, outcome)
    body = completion_of(
        result, completion_id=completion_id, created=created, model=model, detail=options.detail
    )
    return json_response(body, headers=fused_headers(result, outcome))


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
