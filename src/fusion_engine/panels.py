"""Panels: which models answer, which judge fuses, and how long to wait.

A panel lives in ``panels/<name>.yaml``. Loading decodes the file into the ``Panel`` struct
(unknown fields rejected), then ``validate_panel`` checks what types cannot: cross-references to
judge templates and providers, counts and ranges. Every error names the file and the field; a
broken file is never skipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigFileError
from .yamlio import decode_yaml

PANEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCHEMA_VERSION = 1
#: When a panel's fused answers are cached (see ``Panel.cache``).
CacheMode = Literal["auto", "always", "never"]


class PanelMember(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One model on the panel; its own sampling values beat the request's."""

    slug: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    #: A provider from the gateway config; the default provider when unset.
    provider: str | None = None


class EstimatedCost(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The range a query on this panel usually costs (documentation, shown by ``fusion panels``)."""

    min: float
    max: float
    currency: str = "USD"
    unit: str = "query"


class Panel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A panel definition, as written in ``panels/<name>.yaml``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    description: str = ""
    models: list[PanelMember]
    judge_model: str
    judge_template: str = "default"
    #: Provider of the judge and its fallbacks; the default provider when unset.
    judge_provider: str | None = None
    estimated_cost_per_query: EstimatedCost | None = None
    #: Bounds all of one member's attempts together.
    member_timeout_s: float = 120.0
    #: When this passes and ``min_responses`` answered, stragglers are cancelled.
    deadline_s: float | None = None
    min_responses: int = 1
    judge_temperature: float | None = None
    judge_fallback_models: list[str] = msgspec.field(default_factory=list)
    #: When set, member answers are trimmed so the judge's input fits.
    judge_max_input_tokens: int | None = None
    skip_judge_if_single: bool = False
    #: Answer without the judge when the members' agreement is at least this (0 < x <= 1).
    consensus_skip_judge: float | None = None
    #: ``fusion`` asks every member; ``cascade`` asks the first ``max(2, min_responses)``
    #: members (list them cheapest first) and the rest only when those disagree.
    strategy: Literal["fusion", "cascade"] = "fusion"
    #: Stop waiting as soon as ``min_responses`` members agree (no need for ``deadline_s``).
    early_quorum: bool = False
    #: A tool call is returned only if at least this many members proposed it (same function,
    #: equivalent arguments); otherwise the judge must answer in text.
    tool_quorum: int | None = None
    #: This panel's own per-request cost ceiling (the lower of it and the gateway's applies).
    max_cost_usd: float | None = None
    shuffle_answers: bool = False
    web_search: bool = False
    #: ``auto``: cache only deterministic requests (every member at temperature 0, or seeded)
    #: and never web-search answers; ``always`` (or ``true``): cache regardless; ``never``
    #: (or ``false``): never cache.
    cache: CacheMode | bool = "auto"
    #: Sent as OpenRouter's ``provider`` object (e.g. ``{data_collection: deny}``).
    provider_options: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def cache_mode(self) -> CacheMode:
        """``cache`` with ``true``/``false`` read as ``always``/``never``."""
        if isinstance(self.cache, bool):
            return "always" if self.cache else "never"
        return self.cache

    @property
    def distinct_models(self) -> list[str]:
        """Member slugs without repeats, in panel order."""
        return list(dict.fromkeys(member.slug for member in self.models))


def validate_panel(
    panel: Panel,
    source: str,
    *,
    judge_templates: Collection[str] | None = None,
    providers: Collection[str] | None = None,
    max_members: int = 16,
) -> Panel:
    """Check what the struct's types cannot; return the panel unchanged when it is valid.

    Args:
        source: the file (or ``<request>``) named in error messages.
        judge_templates: known template names; ``None`` skips the check.
        providers: known provider names; ``None`` skips the check.

    Raises:
        ConfigFileError: naming ``source`` and the offending field.
    """

    def fail(field: str, problem: str) -> None:
        raise ConfigFileError(source, field, problem)

    if panel.schema_version != SCHEMA_VERSION:
        fail("schema_version", f"unsupported version {panel.schema_version}; expected 1")
    if not PANEL_NAME.match(panel.name):
        fail("name", f"{panel.name!r} must be 1-64 letters, digits, '_', '-' or '.'")
    if not panel.models:
        fail("models", "a panel needs at least one model")
    if len(panel.models) > max_members:
        fail("models", f"{len(panel.models)} members is over the limit of {max_members}")
    for position, member in enumerate(panel.models):
        _validate_member(member, f"models[{position}]", providers, fail)
    if not panel.judge_model.strip():
        fail("judge_model", "must name a model")
    if judge_templates is not None and panel.judge_template not in judge_templates:
        known = ", ".join(sorted(judge_templates)) or "none loaded"
        fail("judge_template", f"unknown judge template {panel.judge_template!r} (known: {known})")
    if providers is not None and panel.judge_provider not in (None, *providers):
        fail("judge_provider", f"unknown provider {panel.judge_provider!r}")
    for position, slug in enumerate(panel.judge_fallback_models):
        if not slug.strip():
            fail(f"judge_fallback_models[{position}]", "must name a model")
    _validate_numbers(panel, fail)
    return panel


def _validate_member(
    member: PanelMember, where: str, providers: Collection[str] | None, fail: Any
) -> None:
    if not member.slug.strip():
        fail(f"{where}.slug", "must name a model")
    if member.max_tokens is not None and member.max_tokens < 1:
        fail(f"{where}.max_tokens", "must be at least 1")
    if member.temperature is not None and not 0 <= member.temperature <= 2:
        fail(f"{where}.temperature", "must be between 0 and 2")
    if member.top_p is not None and not 0 <= member.top_p <= 1:
        fail(f"{where}.top_p", "must be between 0 and 1")
    if providers is not None and member.provider is not None and member.provider not in providers:
        fail(f"{where}.provider", f"unknown provider {member.provider!r}")


def _validate_numbers(panel: Panel, fail: Any) -> None:
    if panel.member_timeout_s <= 0:
        fail("member_timeout_s", "must be greater than 0")
    if panel.deadline_s is not None and panel.deadline_s <= 0:
        fail("deadline_s", "must be greater than 0")
    if not 1 <= panel.min_responses <= len(panel.models):
        fail("min_responses", f"must be between 1 and the number of models ({len(panel.models)})")
    if panel.judge_temperature is not None and not 0 <= panel.judge_temperature <= 2:
        fail("judge_temperature", "must be between 0 and 2")
    if panel.tool_quorum is not None and not 1 <= panel.tool_quorum <= len(panel.models):
        fail("tool_quorum", f"must be between 1 and the number of models ({len(panel.models)})")
    if panel.strategy == "cascade" and len(panel.models) <= max(2, panel.min_responses):
        fail("strategy", "a cascade needs more members than its first stage, max(2, min_responses)")
    if panel.max_cost_usd is not None and panel.max_cost_usd <= 0:
        fail("max_cost_usd", "must be greater than 0")
    if panel.consensus_skip_judge is not None and not 0 < panel.consensus_skip_judge <= 1:
        fail("consensus_skip_judge", "must be greater than 0 and at most 1")
    if panel.judge_max_input_tokens is not None and panel.judge_max_input_tokens < 256:
        fail("judge_max_input_tokens", "must be at least 256")
    cost = panel.estimated_cost_per_query
    if cost is not None and not 0 <= cost.min <= cost.max:
        fail("estimated_cost_per_query", "needs 0 <= min <= max")


def load_panel_file(
    path: Path,
    *,
    judge_templates: Collection[str] | None = None,
    providers: Collection[str] | None = None,
    max_members: int = 16,
) -> Panel:
    """Read and validate one panel file; its ``name`` must equal the file's stem.

    Raises:
        ConfigFileError: the file is unreadable or invalid (message names file and field).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(str(path), None, f"cannot read: {exc.strerror}") from exc
    panel = decode_yaml(path, data, Panel)
    if panel.name != path.stem:
        raise ConfigFileError(
            str(path), "name", f"{panel.name!r} must equal the file name {path.stem!r}"
        )
    return validate_panel(
        panel,
        str(path),
        judge_templates=judge_templates,
        providers=providers,
        max_members=max_members,
    )


def load_panels(
    directory: Path | str = "panels",
    *,
    judge_templates: Collection[str] | None = None,
    providers: Collection[str] | None = None,
    max_members: int = 16,
) -> dict[str, Panel]:
    """Load every ``*.yaml`` / ``*.yml`` directly in ``directory`` (subfolders such as
    ``examples/`` are not loaded), sorted by name.

    Raises:
        ConfigFileError: any file is invalid, or two files define the same panel.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigFileError(str(folder), None, "panels directory does not exist")
    panels: dict[str, Panel] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        panel = load_panel_file(
            path, judge_templates=judge_templates, providers=providers, max_members=max_members
        )
        if panel.name in panels:
            raise ConfigFileError(str(path), "name", f"panel {panel.name!r} is defined twice")
        panels[panel.name] = panel
    return panels
