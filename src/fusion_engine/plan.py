"""Resolve what a fusion will do before any money is spent: panel, providers, judge, bodies.

``make_plan`` turns the caller's arguments (a panel name, a ``Panel``, or ad-hoc model slugs,
plus overrides) into a frozen ``FusionPlan``; every lookup error — unknown panel, template or
provider, a missing provider key — is raised here, before the fan-out. The body builders are pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .config import Provider, ResolvedConfig
from .errors import (
    ConfigFileError,
    InvalidRequestError,
    UnknownJudgeTemplateError,
    UnknownPanelError,
)
from .panels import Panel, PanelMember, validate_panel
from .protocol import GenerationParams, Message, validate_messages

MODEL_PREFIX = "fusion/"
#: ``fusion-<panel>``: the same panel, for clients that read the part before ``/`` as a provider.
ALIAS_PREFIX = "fusion-"
AD_HOC_PANEL = "ad-hoc"
TOOL_TEMPLATE = "tool_synthesis"

#: What callers may pass as a panel: a name, a Panel, or members (slugs, PanelMembers, dicts).
PanelArg = str | Panel | Sequence[str | PanelMember | Mapping[str, Any]]


class FusionPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a fusion needs, resolved and checked."""

    panel: Panel
    conversation: list[Message]
    params: GenerationParams
    member_providers: list[Provider]
    judge_chain: list[str]
    judge_provider: Provider
    template_name: str
    template: str
    web_search: bool
    #: Members left out to fit the cost ceiling (reported in the result).
    dropped_members: list[str] = msgspec.field(default_factory=list)

    @property
    def with_tools(self) -> bool:
        """Whether the caller offered tools (members may propose calls, the judge may make them)."""
        return bool(self.params.tools)


def panel_of_model(model: str) -> str | None:
    """The panel a model id names (``fusion/<panel>`` or its alias ``fusion-<panel>``), or
    ``None`` for any other id (passed through)."""
    for prefix in (MODEL_PREFIX, ALIAS_PREFIX):
        if model.startswith(prefix):
            return model[len(prefix) :]
    return None


def make_plan(
    prompt: str | Sequence[Message],
    *,
    panel: PanelArg | None,
    panels: Mapping[str, Panel],
    templates: Mapping[str, str],
    config: ResolvedConfig,
    judge_model: str | None = None,
    judge_template: str | None = None,
    web_search: bool | None = None,
    params: GenerationParams | None = None,
) -> FusionPlan:
    """Resolve a fusion request into a plan.

    Raises:
        InvalidRequestError: malformed messages, no panel, or an invalid ad-hoc panel.
        UnknownPanelError / UnknownJudgeTemplateError: a name that is not loaded.
        ProviderKeyMissingError: a provider the plan needs has no key configured.
    """
    conversation = conversation_from(prompt)
    params = params or GenerationParams()
    chosen = _resolve_panel(panel, panels, judge_model, config)
    if judge_model:
        chosen = msgspec.structs.replace(chosen, judge_model=judge_model)
    template_name = _template_name(chosen, judge_template, with_tools=bool(params.tools))
    if template_name not in templates:
        raise UnknownJudgeTemplateError(
            f"unknown judge template {template_name!r}", param="judge_template"
        )
    member_providers = [_provider(config, m.provider, "models") for m in chosen.models]
    judge_provider = _provider(config, chosen.judge_provider, "judge_provider")
    for provider in {p.name: p for p in [*member_providers, judge_provider]}.values():
        provider.require_key()
    return FusionPlan(
        panel=chosen,
        conversation=conversation,
        params=params,
        member_providers=member_providers,
        judge_chain=[chosen.judge_model, *chosen.judge_fallback_models],
        judge_provider=judge_provider,
        template_name=template_name,
        template=templates[template_name],
        web_search=chosen.web_search if web_search is None else web_search,
    )


def conversation_from(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt string becomes one user message; a message list is validated as it is."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return [{"role": "user", "content": prompt}]
    return validate_messages(prompt)


def _resolve_panel(
    panel: PanelArg | None,
    panels: Mapping[str, Panel],
    judge_model: str | None,
    config: ResolvedConfig,
) -> Panel:
    if panel is None:
        raise InvalidRequestError("name a panel, or give models and a judge_model", param="panel")
    if isinstance(panel, Panel):
        return panel
    if isinstance(panel, str):
        name = panel_of_model(panel)
        if name is None:
            name = panel
        if name not in panels:
            raise UnknownPanelError(f"unknown panel {name!r}", param="panel")
        return panels[name]
    return _ad_hoc_panel(panel, judge_model, config)


def _ad_hoc_panel(
    members: Sequence[str | PanelMember | Mapping[str, Any]],
    judge_model: str | None,
    config: ResolvedConfig,
) -> Panel:
    if not judge_model:
        raise InvalidRequestError("an ad-hoc panel needs a judge_model", param="judge_model")
    try:
        models = [_member(item) for item in members]
        panel = Panel(name=AD_HOC_PANEL, models=models, judge_model=judge_model)
        return validate_panel(
            panel,
            "<request>",
            providers=config.providers.keys(),
            max_members=config.gateway.limits.max_members,
        )
    except ConfigFileError as exc:
        raise InvalidRequestError(exc.problem, param=exc.field or "models") from exc
    except (msgspec.ValidationError, TypeError) as exc:
        raise InvalidRequestError(f"invalid model entry: {exc}", param="models") from exc


def _member(item: str | PanelMember | Mapping[str, Any]) -> PanelMember:
    if isinstance(item, PanelMember):
        return item
    if isinstance(item, str):
        return PanelMember(slug=item)
    return msgspec.convert(dict(item), PanelMember)


def _template_name(panel: Panel, requested: str | None, *, with_tools: bool) -> str:
    if requested:
        return requested
    if with_tools and panel.judge_template == "default":
        return TOOL_TEMPLATE
    return panel.judge_template


def _provider(config: ResolvedConfig, name: str | None, param: str) -> Provider:
    if name is None:
        return config.default_provider
    if name not in config.providers:
        raise InvalidRequestError(f"unknown provider {name!r}", param=param)
    return config.providers[name]


def member_body(plan: FusionPlan, member: PanelMember) -> dict[str, Any]:
    """The request body for one member: the conversation, request sampling, member overrides."""
    body: dict[str, Any] = {"model": member.slug, "messages": plan.conversation}
    body.update(plan.params.member_fields())
    for field in ("temperature", "top_p", "seed", "max_tokens"):
        value = getattr(member, field)
        if value is not None:
            body[field] = value
    if plan.web_search:
        body["plugins"] = [{"id": "web"}]
    _add_provider_options(body, plan.panel)
    return body


def judge_body(plan: FusionPlan, model: str, messages: list[Message]) -> dict[str, Any]:
    """The request body for the judge (or a fallback judge)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    body.update(plan.params.judge_fields())
    if plan.panel.judge_temperature is not None:
        body["temperature"] = plan.panel.judge_temperature
    _add_provider_options(body, plan.panel)
    return body


def _add_provider_options(body: dict[str, Any], panel: Panel) -> None:
    if panel.provider_options:
        body["provider"] = dict(panel.provider_options)
