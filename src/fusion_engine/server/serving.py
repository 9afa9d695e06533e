"""Start the gateway: check everything in this process first, then run gunicorn or uvicorn."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping

from .. import tracing
from ..engine import FusionEngine
from ..errors import ConfigError
from ..settings import Settings
from .metrics_dir import with_private_metrics_dir

GUNICORN_CONFIG = "python:fusion_engine.server.gunicorn_conf"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_binding(settings: Settings, *, yaml_keys: bool = False) -> None:
    """Refuse to serve without keys (``FUSION_SERVER_API_KEYS`` or the YAML's ``keys:``) on a
    reachable address (unless FUSION_ALLOW_NO_AUTH=1).

    Raises:
        ConfigError: no keys, a non-loopback address, and no explicit opt-in.
    """
    if (
        settings.server_api_keys
        or yaml_keys
        or settings.allow_no_auth
        or is_loopback(settings.host)
    ):
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} without API keys: set FUSION_SERVER_API_KEYS "
        "(or FUSION_ALLOW_NO_AUTH=1 to run open on purpose)"
    )


def run_server(environ: Mapping[str, str], *, dev: bool) -> int:
    """Validate settings, config, panels and judges, then serve until stopped.

    Raises:
        ConfigError: anything invalid, reported before a worker starts.
    """
    settings = Settings.from_environ(environ)
    tracing.require_extra(environ)
    engine = FusionEngine(settings=settings)  # loads and validates every file
    check_auth_binding(settings, yaml_keys=bool(engine.config.keys))
    if dev:
        import uvicorn

        from .app import create_app
        from .http_guard import GuardedHttpToolsProtocol

        uvicorn.run(
            create_app(settings, engine=engine),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            http=GuardedHttpToolsProtocol,
        )
        return 0
    environ = with_private_metrics_dir(environ, workers=settings.workers)
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG]
    os.execve(sys.executable, argv, environ)
    return 0  # not reached: execve replaces this process
