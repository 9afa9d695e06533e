"""Panels and judge templates as one set: where they come from (their directories, or the
copies bundled in the wheel, so the library and the CLI work from any directory) and the one
struct that holds both, so a reload swaps them together."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import msgspec

from .config import ResolvedConfig
from .errors import ConfigError
from .judges import load_judge_templates
from .panels import Panel, load_panels
from .settings import Settings


class Definitions(msgspec.Struct, frozen=True):
    """Judge templates and the panels checked against them, replaced only as a whole.

    A reload builds a new one and swaps it in with a single assignment, so a request planned
    at any moment sees the old templates with the old panels or the new with the new; two
    separate attributes let one request see a new panel whose template was not there yet.
    Treat the mappings as read-only: a change is a new ``Definitions``.
    """

    templates: dict[str, str]
    panels: dict[str, Panel]

    @classmethod
    def of(cls, templates: Mapping[str, str], panels: Mapping[str, Panel]) -> Definitions:
        """A set from a caller's mappings (copied: later changes to them do not leak in)."""
        return cls(dict(templates), dict(panels))


def load_definitions(settings: Settings, config: ResolvedConfig) -> Definitions:
    """Judge templates and panels, each panel checked against the templates, the config's
    providers and its member limit.

    Raises:
        ConfigError: a directory is missing, or a file is invalid (named with its field).
    """
    templates = load_judge_templates(_directory(settings.judges_dir, "judges"))
    panels = load_panels(
        _directory(settings.panels_dir, "panels"),
        judge_templates=templates.keys(),
        providers=config.providers.keys(),
        max_members=config.gateway.limits.max_members,
    )
    return Definitions(templates, panels)


def _directory(configured: Path, bundled_name: str) -> Path:
    """The configured directory, or the copy bundled in the wheel when it does not exist."""
    if configured.is_dir():
        return configured
    bundled = Path(str(resources.files("fusion_engine") / "bundled" / bundled_name))
    if bundled.is_dir():
        return bundled
    raise ConfigError(f"{configured}: directory not found (set FUSION_{bundled_name.upper()}_DIR)")
