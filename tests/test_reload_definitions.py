"""Reloading panels and judge templates: one whole set at a time, read off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fusion_engine import FusionEngine
from fusion_engine.errors import FusionError
from fusion_engine.settings import Settings

from .helpers import ROOT

if TYPE_CHECKING:
    from fusion_engine.definitions import Definitions

PANEL = """\
schema_version: 1
name: p
models: [{slug: a/one}, {slug: a/two}]
judge_model: a/judge
judge_template: TEMPLATE
"""
OLD = ("ok", "old", "Old judge.")
NEW = ("ok", "new", "New judge.")


def write_set(root: Path, template: str) -> None:
    """A panel ``p`` judged with ``template``, which is the only template there is."""
    for stale in (root / "judges").glob("*.md"):
        stale.unlink()
    (root / "judges" / f"{template}.md").write_text(f"{template.title()} judge.")
    (root / "panels" / "p.yaml").write_text(PANEL.replace("TEMPLATE", template))


class WatchedEngine(FusionEngine):
    """Plans a request around every attribute write, as a request arriving then would."""

    watching = False
    seen: list[tuple[str, ...]]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if self.watching:
            self.seen.append(self.planned())

    def planned(self) -> tuple[str, ...]:
        try:
            plan = self.plan("hi", panel="p")
        except FusionError as error:
            return ("error", type(error).__name__)
        return ("ok", plan.template_name, plan.template)


@pytest.fixture
def definitions_root(tmp_path: Path) -> Path:
    (tmp_path / "judges").mkdir()
    (tmp_path / "panels").mkdir()
    write_set(tmp_path, "old")
    return tmp_path


def engine_on(root: Path, engine_class: type[FusionEngine] = FusionEngine) -> Any:
    settings = Settings.from_environ(
        {
            "FUSION_PANELS_DIR": str(root / "panels"),
            "FUSION_JUDGES_DIR": str(root / "judges"),
            "FUSION_CONFIG": str(ROOT / "config" / "gateway.yaml"),
            "OPENROUTER_API_KEY": "k",
        }
    )
    return engine_class(settings=settings)


@pytest.mark.parametrize("how", ["reload", "areload"])
async def test_a_request_planned_during_a_reload_sees_the_old_set_or_the_new(
    definitions_root: Path, how: str
) -> None:
    """Every write a reload makes is a moment a request could be planned: each such plan has
    the old panel with the old template or the new with the new, never one of each."""
    engine = engine_on(definitions_root, WatchedEngine)
    engine.seen = []
    assert engine.planned() == OLD
    write_set(definitions_root, "new")  # the new panel needs a template the old set lacks
    engine.watching = True
    if how == "reload":
        engine.reload()
    else:
        await engine.areload()
    engine.watching = False
    assert engine.seen, "the reload changed nothing"
    assert set(engine.seen) <= {OLD, NEW}, engine.seen
    assert engine.planned() == NEW


async def test_reload_reads_the_files_off_the_event_loop(
    definitions_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the new set is being read, the loop keeps planning requests with the old set."""
    engine = engine_on(definitions_root)
    write_set(definitions_root, "new")
    reading, release = threading.Event(), threading.Event()
    read = engine.read_definitions

    def slow_read() -> Definitions:
        reading.set()
        release.wait(10)
        result: Definitions = read()
        return result

    monkeypatch.setattr(engine, "read_definitions", slow_read)
    reload = asyncio.create_task(engine.areload())
    assert await asyncio.to_thread(reading.wait, 10)
    # The read is blocked in its thread, and this coroutine still runs: the loop is free.
    assert engine.plan("hi", panel="p").template_name == "old"
    release.set()
    await reload
    assert engine.plan("hi", panel="p").template_name == "new"
