"""Where panels and judge templates come from: their directories, or the copies bundled in
the wheel (so the library and the CLI work from any directory)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .config import ResolvedConfig
from .errors import ConfigError
from .judges import load_judge_templates
from .panels import Panel, load_panels
from .settings import Settings


def load_definitions(
    settings: Settings, config: ResolvedConfig
) -> tuple[dict[str, str], dict[str, Panel]]:
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
    return templates, panels


def _directory(configured: Path, bundled_name: str) -> Path:
    """The configured directory, or the copy bundled in the wheel when it does not exist."""
    if configured.is_dir():
        return configured
    bundled = Path(str(resources.files("fusion_engine") / "bundled" / bundled_name))
    if bundled.is_dir():
        return bundled
    raise ConfigError(f"{configured}: directory not found (set FUSION_{bundled_name.upper()}_DIR)")
