"""``POST /fuse``: the whole FusionResult as JSON, or SSE progress events with ``stream``.

Events: ``member`` (a PanelResponse as each member finishes), ``judge`` (each delta of the
judge's text), ``result`` (the final FusionResult) and ``error``. The web UI uses this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from ..cache import CacheResult, scope_for
from ..errors import InvalidRequestError
from ..plan import FusionPlan, PanelArg
from ..protocol import GenerationParams, split_validation_error
from ..results import FusionResult, JudgeDelta, MemberFinished
from .admission import admit
from .answers import fuse_whole
from .errors import error_payload, json_response
from .gateway import Gateway, gateway_of
from .observe import RequestFacts, facts_of, record_result, trace_fusion
from .runs import Failed, Finished, FusionRun, RunItem
from .schema import FuseRequest, fused_headers
from .streaming import KEEPALIVE, SSE_HEADERS, start_fusion

_encode = msgspec.json.Encoder().encode


@post("/fuse", status_code=200, summary="Run a fusion, get every detail")
async def fuse(request: Request[Any, Any, Any]) -> Response[Any]:
    """Fuse a prompt or conversation; the answer is the full FusionResult."""
    admitted = await admit(request)
    gateway = gateway_of(request)
    body = parse_fuse_request(admitted.body)
    # A judge model of the caller's choosing is choosing models: only an ``ad-hoc`` key may.
    ad_hoc = body.panel is None or body.judge_model is not None
    plan = await admitted.admit_fusion(gateway, plan_from(gateway, body), ad_hoc=ad_hoc)
    facts = facts_of(request)
    facts.panel = plan.panel.name
    cache_control = request.headers.get("cache-control")
    scope = scope_for(admitted.key_name, gateway.config.gateway.cache_scope)
    slot = await admitted.fusion_slot()
    if not body.stream:
        result, headers = await fuse_whole(request, gateway, plan, slot, cache_control, scope)
        return json_response(result, headers=headers)
    span = trace_fusion(request, plan.panel.name)
    try:
        with span.activate():  # the fusion's task starts in it, so its calls are its children
            ticket, run = await start_fusion(
                request, gateway, plan, slot=slot, cache_control=cache_control, scope=scope
            )
    except BaseException as error:
        span.fail(error)
        span.end()
        raise
    headers = {**SSE_HEADERS, **fused_headers(ticket.result, ticket.outcome)}
    if run is None:
        assert ticket.result is not None  # start_fusion: no run means a hit
        events = _single(ticket.result)
    else:
        events = _progress(run, gateway.settings.keepalive_s, facts, ticket.outcome)
    return Stream(span.follow(events), media_type="text/event-stream", headers=headers)


async def _single(result: FusionResult) -> AsyncIterator[bytes]:
    yield _event("result", result)


def parse_fuse_request(raw: dict[str, Any]) -> FuseRequest:
    """The typed /fuse body; exactly one of prompt and messages.

    Raises:
        InvalidRequestError: naming the field at fault.
    """
    try:
        body = msgspec.convert(raw, FuseRequest)
    except msgspec.ValidationError as exc:
        field, problem = split_validation_error(str(exc))
        raise InvalidRequestError(f"{field}: {problem}" if field else problem, param=field) from exc
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give exactly one of 'prompt' and 'messages'", param="prompt")
    if (body.panel is None) == (body.models is None):
        raise InvalidRequestError("give exactly one of 'panel' and 'models'", param="panel")
    return body


def plan_from(gateway: Gateway, body: FuseRequest) -> FusionPlan:
    """The plan for a /fuse body."""
    panel: PanelArg = body.panel if body.panel is not None else (body.models or [])
    prompt = body.prompt if body.prompt is not None else (body.messages or [])
    return gateway.engine.plan(
        prompt,
        panel=panel,
        judge_model=body.judge_model,
        judge_template=body.judge_template,
        web_search=body.web_search,
        params=GenerationParams(tools=body.tools, tool_choice=body.tool_choice),
    )


def _event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


async def _progress(
    run: FusionRun, keepalive_s: float, facts: RequestFacts, outcome: CacheResult
) -> AsyncIterator[bytes]:
    try:
        while True:
            burst = await run.next_burst(keepalive_s)
            if not burst:
                yield KEEPALIVE
                continue
            if text := b"".join(_progress_event(item) for item in burst):
                yield text
            if isinstance(burst[-1], Finished):
                record_result(facts, burst[-1].result, outcome)  # cost and tokens in the log
            if isinstance(burst[-1], Finished | Failed):
                return
    finally:
        await run.cancel()


def _progress_event(item: RunItem) -> bytes:
    if isinstance(item, MemberFinished):
        return _event("member", item.response)
    if isinstance(item, JudgeDelta):
        text = "".join(choice.delta.content or "" for choice in item.chunk.choices)
        return _event("judge", {"delta": text}) if text else b""
    if isinstance(item, Finished):
        return _event("result", item.result)
    if isinstance(item, Failed):
        return _event("error", error_payload(item.error))
    return b""
