"""What the routes share: the engine, settings and config of one worker."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request

from ..config import ResolvedConfig
from ..engine import FusionEngine
from ..settings import Settings


class Gateway:
    """Per-worker state, built by ``create_app`` and reached from routes via ``gateway_of``."""

    def __init__(self, settings: Settings, engine: FusionEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.started_at = int(time.time())
        #: Set when the worker is shutting down, so /ready stops attracting traffic.
        self.draining = False

    @property
    def config(self) -> ResolvedConfig:
        """The resolved gateway config."""
        return self.engine.config


def gateway_of(request: Request[Any, Any, Any]) -> Gateway:
    """The Gateway of the app serving ``request``."""
    gateway: Gateway = request.app.state.gateway
    return gateway
