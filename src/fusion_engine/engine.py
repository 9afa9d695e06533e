"""FusionEngine: fan a conversation out to a panel, wait for a quorum, have a judge fuse one answer.

The engine imports no web framework. It owns an ``UpstreamClient`` (one pooled aiohttp session);
use ``async with FusionEngine() as engine`` or ``await engine.aclose()``. Cancelling ``fuse``
cancels every upstream call still running.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import msgspec
import structlog

from . import tracing
from .agreement import measure_agreement
from .calls import failed_response, response_from_reply
from .config import Provider, ResolvedConfig, load_config
from .definitions import Definitions, load_definitions
from .errors import JudgeFailedError, UpstreamError
from .judges import build_judge_messages, new_boundary
from .panels import Panel, PanelMember
from .plan import FusionPlan, PanelArg, judge_body, make_plan, member_body
from .protocol import (
    ChatCompletionChunk,
    ChunkAccumulator,
    GenerationParams,
    Message,
)
from .quorum import (
    cascade_settled,
    cascade_size,
    invalid_tool_call,
    judge_skip,
    panel_failure,
    quorum_reached,
    quorum_stand_in,
    tool_votes,
    within_tool_quorum,
)
from .results import (
    Agreement,
    Degraded,
    FusionEvent,
    FusionResult,
    JudgeDelta,
    JudgeStarted,
    MemberFinished,
    PanelResponse,
    sum_costs,
)
from .settings import Settings
from .timing import Clock
from .upstream import UpstreamClient, UpstreamReply

log = structlog.get_logger("fusion_engine.engine")

#: Receives progress events; called synchronously, so it must be quick (queue, print).
Listener = Callable[[FusionEvent], None]
#: Told about every upstream call (members, judges, stragglers cancelled at the deadline).
CallObserver = Callable[[PanelResponse], None]


class FusionEngine:
    """Runs fusions. Everything is injectable; by default it reads the environment once.

    Args:
        settings: process settings (default: from ``os.environ``).
        config: resolved gateway config (default: the file the settings name).
        panels: loaded panels (default: the panels directory, or the bundled panels).
        judge_templates: ``{name: text}`` (default: the judges directory, or the bundled ones).
        upstream: the upstream client (default: a new one, closed by ``aclose``).
        clock: time source for deadlines (default: the upstream client's).
        on_call: told about every upstream call, e.g. to record metrics.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        config: ResolvedConfig | None = None,
        panels: Mapping[str, Panel] | None = None,
        judge_templates: Mapping[str, str] | None = None,
        upstream: UpstreamClient | None = None,
        clock: Clock | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self.settings = settings or Settings.from_environ(os.environ)
        self.config = config or load_config(self.settings)
        if judge_templates is None or panels is None:
            loaded = self.read_definitions()
            judge_templates = loaded.templates if judge_templates is None else judge_templates
            panels = loaded.panels if panels is None else panels
        #: Templates and panels, one immutable set replaced whole by ``reload``.
        self.definitions = Definitions.of(judge_templates, panels)
        self.upstream = upstream or UpstreamClient(clock=clock)
        self.clock: Clock = clock or self.upstream.clock
        self.on_call: CallObserver = on_call or _ignore_call

    @property
    def panels(self) -> Mapping[str, Panel]:
        """The loaded panels by name (of the current set; read-only)."""
        return self.definitions.panels

    @property
    def judge_templates(self) -> Mapping[str, str]:
        """The loaded judge templates by name (of the current set; read-only)."""
        return self.definitions.templates

    def read_definitions(self) -> Definitions:
        """Judge templates and panels from their directories (see ``load_definitions``)."""
        return load_definitions(self.settings, self.config)

    def reload(self) -> None:
        """Re-read templates and panels; on any error the current set stays as it was.

        Blocks while the files are read: in a running event loop use ``areload``.

        Raises:
            ConfigError: the new set is invalid (and was not applied).
        """
        # One assignment: plans already made keep the panel and template text they resolved;
        # new requests see the whole new set at once.
        self.definitions = self.read_definitions()

    async def areload(self) -> Definitions:
        """``reload`` with the files read and validated in a thread, so the loop keeps serving;
        the new set is swapped in on the loop, whole. Returns the set now in force.

        Raises:
            ConfigError: the new set is invalid (and was not applied).
        """
        definitions = await asyncio.to_thread(self.read_definitions)
        self.definitions = definitions
        return definitions

    async def __aenter__(self) -> FusionEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the upstream session."""
        await self.upstream.aclose()

    def plan(
        self,
        prompt: str | Sequence[Message],
        *,
        panel: PanelArg | None = None,
        judge_model: str | None = None,
        judge_template: str | None = None,
        web_search: bool | None = None,
        params: GenerationParams | None = None,
    ) -> FusionPlan:
        """Resolve a request without spending anything (see ``plan.make_plan`` for errors)."""
        definitions = self.definitions  # read once: panel and template from the same set
        return make_plan(
            prompt,
            panel=panel,
            panels=definitions.panels,
            templates=definitions.templates,
            config=self.config,
            judge_model=judge_model,
            judge_template=judge_template,
            web_search=web_search,
            params=params,
        )

    async def fuse(
        self,
        prompt: str | Sequence[Message],
        *,
        panel: PanelArg | None = None,
        judge_model: str | None = None,
        judge_template: str | None = None,
        web_search: bool | None = None,
        params: GenerationParams | None = None,
        listener: Listener | None = None,
    ) -> FusionResult:
        """Ask the panel, then the judge; return the fused answer with every call's detail.

        Args:
            prompt: a prompt string, or an OpenAI ``messages`` list (multi-turn, system prompt,
                tool calls and results).
            panel: a panel name (``budget`` or ``fusion/budget``), a ``Panel``, or ad-hoc members
                (slugs, ``PanelMember``s or dicts with ``slug``/``max_tokens``...).
            judge_model / judge_template: override the panel's judge.
            web_search: override the panel's web-search setting.
            params: generation parameters (sampling, tools, limits...).
            listener: called with progress events as members finish.

        Raises:
            PanelFailedError: no member answered (``PanelTimeoutError`` if all timed out).
            InvalidRequestError, UnknownPanelError, UnknownJudgeTemplateError,
            ProviderKeyMissingError: the request cannot run; nothing was spent.
        """
        plan = self.plan(
            prompt,
            panel=panel,
            judge_model=judge_model,
            judge_template=judge_template,
            web_search=web_search,
            params=params,
        )
        return await self.run(plan, listener=listener)

    async def run(
        self, plan: FusionPlan, *, listener: Listener | None = None, stream_judge: bool = False
    ) -> FusionResult:
        """Execute a plan. With ``stream_judge`` the judge's chunks reach ``listener`` as they
        arrive; a judge that fails after its first chunk then raises ``JudgeFailedError``.
        """
        notify = listener or _ignore
        started = self.clock.monotonic()
        responses, settled = await self._gather(plan, notify)
        answers = [response for response in responses if response.ok]
        if not answers:
            raise panel_failure(responses)
        agreement = measure_agreement(answers)
        skipped = "cascade" if settled else judge_skip(plan.panel, answers, agreement)
        quorum = plan.panel.tool_quorum if plan.with_tools else None
        votes = tool_votes(answers) if quorum else []
        judge: PanelResponse | None = None
        attempts: list[PanelResponse] = []
        # Every member answer that becomes the reply passes the tool quorum, as the judge's does.
        final = quorum_stand_in(answers, agreement, votes, quorum) if skipped else None
        if final is None:
            skipped = None  # no member answer may be returned as it is: the judge decides
            text_only = quorum is not None and not any(v.votes >= quorum for v in votes)
            # A verdict must pass the tool quorum before any of it reaches the caller, so with
            # a quorum the judge is not relayed live (its checked answer is sent whole).
            stream = stream_judge and quorum is None
            judge, attempts = await self._judge(
                plan, answers, agreement, notify, stream, text_only=text_only
            )
            if judge is not None and quorum is not None:
                judge = within_tool_quorum(judge, votes, quorum)
                judge = judge if judge.ok else None
            final = judge or quorum_stand_in(answers, agreement, votes, quorum)
        if final is None:
            raise JudgeFailedError(
                "every judge failed and no member answer passes the tool quorum"
                f" ({quorum} proposals needed)"
            )
        degraded: Degraded | None = "judge_failed" if attempts and judge is None else None
        if degraded:
            log.warning("judge_failed", panel=plan.panel.name, stand_in=final.model)
        calls = [*responses, *attempts]
        return FusionResult(
            answer=final.content,
            tool_calls=final.tool_calls,
            finish_reason="tool_calls" if final.tool_calls else (final.finish_reason or "stop"),
            panel=plan.panel.name,
            panel_responses=responses,
            judge_response=judge,
            judge_attempts=attempts,
            total_cost=sum_costs(calls),
            total_latency_ms=(self.clock.monotonic() - started) * 1000,
            tokens_in=sum(call.tokens_in for call in calls),
            tokens_out=sum(call.tokens_out for call in calls),
            degraded=degraded,
            dropped_members=plan.dropped_members,
            agreement=agreement,
            judge_skipped=skipped,
            tool_votes=votes,
        )

    async def _gather(self, plan: FusionPlan, notify: Listener) -> tuple[list[PanelResponse], bool]:
        """The members' responses, and whether a cascade settled on its first members alone."""
        everyone = list(range(len(plan.panel.models)))
        if plan.panel.strategy != "cascade":
            return await self._collect(plan, notify, everyone), False
        first = everyone[: cascade_size(plan.panel)]
        responses = await self._collect(plan, notify, first)
        answers = [response for response in responses if response.ok]
        if cascade_settled(plan.panel, measure_agreement(answers), len(answers)):
            return responses, True
        rest = await self._collect(plan, notify, everyone[len(first) :])
        return [*responses, *rest], False

    async def _collect(
        self, plan: FusionPlan, notify: Listener, indices: Sequence[int]
    ) -> list[PanelResponse]:
        """Fan out to the members at ``indices``; stop when all answered, or at the deadline
        with the quorum in, or (``early_quorum``) as soon as the quorum agrees."""
        members = plan.panel.models
        tasks = {
            asyncio.create_task(self._ask_member(plan, index, members[index])): index
            for index in indices
        }
        deadline = plan.panel.deadline_s
        timer = asyncio.create_task(self.clock.sleep(deadline)) if deadline is not None else None
        finished: dict[int, PanelResponse] = {}
        started = self.clock.monotonic()
        try:
            pending = set(tasks)
            while pending:
                waiting: set[asyncio.Future[Any]] = set(pending)
                if timer is not None and not timer.done():
                    waiting.add(timer)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in [task for task in pending if task in done]:
                    response = task.result()
                    finished[response.index] = response
                    notify(
                        MemberFinished(
                            response=response, finished=len(finished), total=len(members)
                        )
                    )
                pending.difference_update(done)
                if quorum_reached(
                    finished.values(),
                    pending=len(pending),
                    min_responses=plan.panel.min_responses,
                    deadline_passed=timer is not None and timer.done(),
                    early=plan.panel.early_quorum,
                ):
                    break
        except BaseException:
            # Cut short (the client went away): each call still running reports itself as
            # cancelled (``_call``), so what it may have cost is still charged.
            await _cancel_all([*tasks, *([timer] if timer else [])], reason=_CANCELLED)
            raise
        await _cancel_all([*tasks, *([timer] if timer else [])], reason=_DEADLINE)
        elapsed_ms = (self.clock.monotonic() - started) * 1000
        for index in indices:
            if index not in finished:
                # The straggler's own call reported itself (``_call``, as cut off at the
                # deadline); this stands for it in the result.
                finished[index] = PanelResponse(
                    index=index,
                    model=members[index].slug,
                    error="cancelled: the quorum had answered",
                    error_kind="deadline",
                    latency_ms=elapsed_ms,
                )
        return [finished[index] for index in indices]

    async def _ask_member(self, plan: FusionPlan, index: int, member: PanelMember) -> PanelResponse:
        provider = plan.member_providers[index]
        body = member_body(plan, member)
        span = tracing.chat(
            member.slug, provider.kind, body, role="member", index=index, panel=plan.panel.name
        )
        with span:  # a straggler cancelled at the deadline ends it cancelled
            response = await self._call(
                index, member.slug, provider, body, plan.panel.member_timeout_s
            )
            span.record_call(response)
        return response

    async def _call(
        self, index: int, model: str, provider: Provider, body: dict[str, object], timeout_s: float
    ) -> PanelResponse:
        """One non-streaming call as a PanelResponse; failure is data, never an exception."""
        started = self.clock.monotonic()
        try:
            reply = await self.upstream.chat(provider, body, timeout_s=timeout_s)
        except asyncio.CancelledError as cancel:
            self.on_call(_cut_off(index, model, cancel, (self.clock.monotonic() - started) * 1000))
            raise
        except UpstreamError as error:
            response = failed_response(
                index, model, error, (self.clock.monotonic() - started) * 1000
            )
        else:
            response = response_from_reply(index, model, reply)
        self.on_call(response)
        return response

    async def _judge(
        self,
        plan: FusionPlan,
        answers: list[PanelResponse],
        agreement: Agreement | None,
        notify: Listener,
        stream: bool,
        *,
        text_only: bool = False,
    ) -> tuple[PanelResponse | None, list[PanelResponse]]:
        """Try the judge, then each fallback; return the first usable verdict and every attempt."""
        messages = build_judge_messages(
            plan.template,
            plan.conversation,
            answers,
            shuffle=plan.panel.shuffle_answers,
            max_input_tokens=plan.panel.judge_max_input_tokens,
            with_tools=plan.with_tools,
            agreement=agreement,
            boundary=new_boundary(),  # per request, never shown to a member
        )
        attempts: list[PanelResponse] = []
        for position, model in enumerate(plan.judge_chain):
            notify(JudgeStarted(model=model, position=position))
            body = judge_body(plan, model, messages)
            if text_only:
                # No tool call reached the tool quorum: the judge must answer in words.
                body["tool_choice"] = "none"
            timeout_s = plan.panel.member_timeout_s
            span = tracing.chat(
                model, plan.judge_provider.kind, body, role="judge", index=position,
                panel=plan.panel.name,
            )  # fmt: skip
            with span:
                if stream:
                    verdict = await self._stream_judge(plan, position, model, body, notify)
                else:
                    verdict = await self._call(
                        position, model, plan.judge_provider, body, timeout_s
                    )
                verdict = _check_verdict(verdict)
                span.record_call(verdict)
            attempts.append(verdict)
            if verdict.ok:
                return verdict, attempts
            log.warning("judge_attempt_failed", model=model, error=verdict.error)
        return None, attempts

    async def _stream_judge(
        self, plan: FusionPlan, position: int, model: str, body: dict[str, object], notify: Listener
    ) -> PanelResponse:
        started = self.clock.monotonic()
        accumulator = ChunkAccumulator()
        relayed = False
        try:
            stream = self.upstream.stream(
                plan.judge_provider, body, timeout_s=plan.panel.member_timeout_s
            )
            async for events in stream:
                for event in events:
                    relayed = _pass_on(event.chunk, accumulator, notify) or relayed
        except asyncio.CancelledError as cancel:
            self.on_call(
                _cut_off(position, model, cancel, (self.clock.monotonic() - started) * 1000)
            )
            raise
        except UpstreamError as error:
            failed = failed_response(
                position, model, error, (self.clock.monotonic() - started) * 1000
            )
            self.on_call(failed)
            if relayed:
                raise JudgeFailedError(
                    f"the judge broke off mid-answer: {error.message}"
                ) from error
            return failed
        latency_ms = (self.clock.monotonic() - started) * 1000
        reply = UpstreamReply(
            completion=accumulator.completion(), latency_ms=latency_ms, attempts=1
        )
        response = response_from_reply(position, model, reply)
        self.on_call(response)
        return response


def _pass_on(chunk: ChatCompletionChunk, accumulator: ChunkAccumulator, notify: Listener) -> bool:
    """Keep a judge chunk and hand it to the listener; whether it committed us to the answer.

    Only text or tool calls reach the client; a role-only or reasoning-only chunk does not
    commit us, so a failure after it can still fall back.
    """
    accumulator.add(chunk)
    if not chunk.choices:
        return False
    notify(JudgeDelta(chunk=chunk))
    return any(choice.delta.content or choice.delta.tool_calls for choice in chunk.choices)


def _check_verdict(verdict: PanelResponse) -> PanelResponse:
    """A judge answer whose tool calls a client could not execute counts as a failed judge."""
    problem = invalid_tool_call(verdict.tool_calls) if verdict.ok else None
    if problem is None:
        return verdict
    return msgspec.structs.replace(
        verdict, content=None, tool_calls=None, error=problem, error_kind="invalid_response"
    )


#: Why a member call was cancelled (the cancel message ``_call`` reads).
_DEADLINE = "deadline"
_CANCELLED = "cancelled"


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]], *, reason: str = _CANCELLED) -> None:
    for task in tasks:
        task.cancel(reason)
    await asyncio.gather(*tasks, return_exceptions=True)


def _cut_off(
    index: int, model: str, cancel: asyncio.CancelledError, latency_ms: float
) -> PanelResponse:
    """A call cancelled in flight: at the deadline (a straggler), or because its request
    ended (the client went away)."""
    at_deadline = bool(cancel.args) and cancel.args[0] == _DEADLINE
    return PanelResponse(
        index=index,
        model=model,
        error="cancelled: the quorum had answered" if at_deadline else "cancelled",
        error_kind="deadline" if at_deadline else "cancelled",
        latency_ms=latency_ms,
    )


def _ignore(event: FusionEvent) -> None:
    return None


def _ignore_call(response: PanelResponse) -> None:
    return None
