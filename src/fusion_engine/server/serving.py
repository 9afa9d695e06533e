"""Start the gateway: check everything in this process first, then run gunicorn or uvicorn."""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..engine import FusionEngine
from ..errors import ConfigError
from ..settings import Settings

GUNICORN_CONFIG = "python:fusion_engine.server.gunicorn_conf"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_binding(settings: Settings) -> None:
    """Refuse to serve without keys on a reachable address (unless FUSION_ALLOW_NO_AUTH=1).

    Raises:
        ConfigError: no keys, a non-loopback address, and no explicit opt-in.
    """
    if settings.server_api_keys or settings.allow_no_auth or is_loopback(settings.host):
        return
    raise ConfigError(
        f"refusing to serve on {settings.host} without API keys: set FUSION_SERVER_API_KEYS "
        "(or FUSION_ALLOW_NO_AUTH=1 to run open on purpose)"
    )


def with_metrics_dir(environ: Mapping[str, str], *, workers: int) -> dict[str, str]:
    """The environment for the workers, with a clean prometheus multiprocess directory.

    Several workers need one (each writes its own files and /metrics sums them); a fresh
    temporary one is made unless PROMETHEUS_MULTIPROC_DIR names one, whose stale files from
    a previous run are removed so old counts do not come back.
    """
    env = dict(environ)
    if workers > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fusion-metrics-")
    directory = env.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    return env


def run_server(environ: Mapping[str, str], *, dev: bool) -> int:
    """Validate settings, config, panels and judges, then serve until stopped.

    Raises:
        ConfigError: anything invalid, reported before a worker starts.
    """
    settings = Settings.from_environ(environ)
    check_auth_binding(settings)
    engine = FusionEngine(settings=settings)  # loads and validates every file
    environ = with_metrics_dir(environ, workers=settings.workers)
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
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG]
    os.execve(sys.executable, argv, environ)
    return 0  # not reached: execve replaces this process
