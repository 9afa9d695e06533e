"""The systems an eval compares, and how each is asked a question.

``fusion:<panel>`` is the whole panel; ``single:<model>`` one distinct member alone;
``judge_alone:<model>`` the judge model answering by itself. A backend asks them in-process
(through ``FusionEngine``) or through a running gateway (``--base-url``), which is just another
OpenAI-compatible endpoint to the upstream client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import quote

import msgspec

from ..calls import response_from_reply
from ..config import Provider
from ..engine import FusionEngine
from ..errors import FusionError, UnknownPanelError, UpstreamError
from ..panels import Panel
from ..plan import MODEL_PREFIX, judge_body, member_body
from ..protocol import Message
from ..settings import Secret

SystemKind = Literal["fusion", "single", "judge_alone"]
KINDS: tuple[SystemKind, ...] = ("fusion", "single", "judge_alone")


class SystemSpec(msgspec.Struct, frozen=True):
    """One system under test: its name in reports, its kind and the panel or model it asks."""

    name: str
    kind: SystemKind
    target: str


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What a system answered to one question, with what it cost."""

    text: str | None = None
    cost_usd: float | None = None
    latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None


def systems_for(panel: Panel, kinds: Sequence[str]) -> list[SystemSpec]:
    """The systems of ``kinds`` for ``panel``: one ``single`` per distinct member.

    Raises:
        ValueError: an unknown kind.
    """
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}: choose from {', '.join(KINDS)}")
    systems: list[SystemSpec] = []
    if "fusion" in kinds:
        systems.append(SystemSpec(f"fusion:{panel.name}", "fusion", panel.name))
    if "single" in kinds:
        systems += [SystemSpec(f"single:{slug}", "single", slug) for slug in panel.distinct_models]
    if "judge_alone" in kinds:
        judge = panel.judge_model
        systems.append(SystemSpec(f"judge_alone:{judge}", "judge_alone", judge))
    return systems


class Backend(Protocol):
    """Asks a system one question."""

    async def ask(self, system: SystemSpec, prompt: str) -> Answer:
        """The system's answer; failures are data (``Answer.error``), not exceptions."""
        ...


class InProcessBackend:
    """Systems run in this process through a FusionEngine."""

    def __init__(self, engine: FusionEngine, panel: Panel) -> None:
        self._engine = engine
        self._panel = panel

    async def ask(self, system: SystemSpec, prompt: str) -> Answer:
        if system.kind == "fusion":
            return await self._fuse(prompt)
        provider, body = solo_call(self._engine, self._panel, system, prompt)
        return await ask_model(self._engine, provider, body, self._panel.member_timeout_s)

    async def _fuse(self, prompt: str) -> Answer:
        started = time.perf_counter()
        try:
            result = await self._engine.fuse(prompt, panel=self._panel)
        except FusionError as error:
            return Answer(error=error.message, latency_ms=_since(started))
        text = result.answer
        if text is None and result.tool_calls:
            text = "\n".join(
                f"{c.function.name}({c.function.arguments})" for c in result.tool_calls
            )
        return Answer(
            text=text,
            cost_usd=result.total_cost,
            latency_ms=result.total_latency_ms,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
        )


class GatewayBackend:
    """Systems asked through a running gateway: ``fusion/<panel>`` fuses, a slug passes through."""

    def __init__(
        self,
        engine: FusionEngine,
        panel: Panel,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
    ) -> None:
        self._engine = engine
        self._panel = panel
        self._timeout_s = timeout_s
        self._gateway = gateway_provider(base_url, api_key)

    async def ask(self, system: SystemSpec, prompt: str) -> Answer:
        if system.kind == "fusion":
            body = {"model": f"{MODEL_PREFIX}{system.target}", "messages": _user(prompt)}
        else:
            _, body = solo_call(self._engine, self._panel, system, prompt)
        return await ask_model(self._engine, self._gateway, body, self._timeout_s)

    @property
    def provider(self) -> Provider:
        """The gateway as an OpenAI-compatible provider (the grader model goes through it too)."""
        return self._gateway


def gateway_provider(base_url: str, api_key: str | None) -> Provider:
    """A running gateway at ``base_url`` as an OpenAI-compatible provider."""
    return Provider(
        name="gateway",
        kind="openai",
        base_url=base_url.rstrip("/"),
        api_key=Secret(api_key) if api_key else None,
        api_key_env=None,
    )


async def gateway_panel(
    engine: FusionEngine, root_url: str, api_key: str | None, name: str
) -> Panel:
    """A panel as a running gateway serves it (``GET /panels/<name>``, via the upstream client).

    Raises:
        UnknownPanelError: the gateway has no such panel.
        UpstreamError: the gateway could not be asked.
    """
    try:
        document = await engine.upstream.get_json(
            gateway_provider(root_url, api_key), f"/panels/{quote(name, safe='')}", timeout_s=30.0
        )
    except UpstreamError as error:
        if error.status == 404:
            raise UnknownPanelError(f"the gateway has no panel {name!r}") from error
        raise
    return msgspec.convert(document, Panel)


def solo_call(
    engine: FusionEngine, panel: Panel, system: SystemSpec, prompt: str
) -> tuple[Provider, dict[str, Any]]:
    """The provider and body for a ``single`` or ``judge_alone`` system: exactly what the panel
    would send that model (its sampling settings, max_tokens, seed, provider options), so the
    comparison with the panel is fair. A slug on the panel more than once uses its first
    member's settings."""
    plan = engine.plan(prompt, panel=panel)
    if system.kind == "judge_alone":
        return plan.judge_provider, judge_body(plan, system.target, plan.conversation)
    index = next(i for i, member in enumerate(panel.models) if member.slug == system.target)
    return plan.member_providers[index], member_body(plan, panel.models[index])


async def ask_model(
    engine: FusionEngine, provider: Provider, body: dict[str, Any], timeout_s: float
) -> Answer:
    """One plain chat call as an Answer (cost as the provider reported it, or unknown)."""
    started = time.perf_counter()
    try:
        reply = await engine.upstream.chat(provider, body, timeout_s=timeout_s)
    except UpstreamError as error:
        return Answer(error=error.message, latency_ms=_since(started))
    response = response_from_reply(0, str(body["model"]), reply)
    return Answer(
        text=response.content,
        cost_usd=response.cost_usd,
        latency_ms=response.latency_ms,
        tokens_in=response.tokens_in,
        tokens_out=response.tokens_out,
        error=response.error,
    )


def _user(prompt: str) -> list[Message]:
    return [{"role": "user", "content": prompt}]


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
