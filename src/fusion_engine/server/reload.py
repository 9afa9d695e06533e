"""Panels and judge templates follow their files while the gateway runs.

Each worker polls a content hash of both directories every few seconds (content, not mtimes,
so Kubernetes ConfigMap symlink swaps are seen too) and reloads when it changes. A broken edit
keeps the last good set; it is logged (with the file and field) and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from pathlib import Path

import structlog

from ..errors import ConfigError
from .gateway import Gateway

log = structlog.get_logger("fusion_engine.reload")
WATCHED = (("*.yaml", "*.yml"), ("*.md",))


def fingerprint(directories: Iterable[Path]) -> str:
    """A hash of the names and contents of the panel and template files (pure but for reads)."""
    digest = hashlib.sha256()
    for directory, patterns in zip(directories, WATCHED, strict=True):
        files = sorted({path for pattern in patterns for path in directory.glob(pattern)})
        for path in files:
            digest.update(path.name.encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
    return digest.hexdigest()


async def reload_if_changed(gateway: Gateway, last: str) -> str:
    """Reload when the files changed; return the fingerprint now in force.

    Hashing, reading and validating run in a thread; the new set is swapped in on the loop
    with the metric labels, so no request sees half of it.
    """
    directories = (gateway.settings.panels_dir, gateway.settings.judges_dir)
    current = await asyncio.to_thread(fingerprint, directories)
    if current == last:
        return last
    try:
        definitions = await gateway.engine.areload()
    except ConfigError as error:
        gateway.metrics.config_reloads.labels("error").inc()
        log.error("reload_failed", error=error.message, kept_panels=len(gateway.engine.panels))
        return current  # do not retry the same broken content every interval
    gateway.refresh_labels()
    gateway.metrics.config_reloads.labels("ok").inc()
    log.info("reloaded", panels=sorted(definitions.panels))
    return current


async def watch_definitions(gateway: Gateway, interval_s: float) -> None:
    """Poll forever (until cancelled at shutdown)."""
    directories = (gateway.settings.panels_dir, gateway.settings.judges_dir)
    last = await asyncio.to_thread(fingerprint, directories)
    while True:
        await asyncio.sleep(interval_s)
        last = await reload_if_changed(gateway, last)
