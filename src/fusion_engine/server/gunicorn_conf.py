"""Gunicorn settings for the gateway: uvicorn workers (uvloop when installed), one app per worker.

Used by ``fusion serve`` (``-c python:fusion_engine.server.gunicorn_conf``) and by
``config/gunicorn.conf.py`` for a plain ``gunicorn -c config/gunicorn.conf.py``. Values come
from the same environment variables as everything else (FUSION_HOST, FUSION_PORT,
FUSION_WORKERS, FUSION_LOG_LEVEL).
"""

from __future__ import annotations

import os

from fusion_engine.server.metrics_dir import remove_private_metrics_dir
from fusion_engine.settings import Settings

_settings = Settings.from_environ(os.environ)

wsgi_app = "fusion_engine.server.app:create_app_from_env()"
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host
bind = [f"{_host}:{_settings.port}"]
workers = _settings.workers
# UvicornWorker (uvicorn with loop="auto": uvloop when installed), with SIGQUIT fixed.
worker_class = "fusion_engine.server.worker.GatewayWorker"
# Fusions can take minutes: give in-flight requests time to finish on a graceful stop.
graceful_timeout = 120
timeout = 60
keepalive = 5
loglevel = _settings.log_level
accesslog = None
# gunicorn 27's control socket lives under $HOME, which a read-only container may not have;
# the gateway does not use it.
control_socket_disable = True


def child_exit(server: object, worker: object) -> None:
    """A worker exited: its live gauges must stop counting in the multiprocess sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]


def on_exit(server: object) -> None:
    """The master stops: remove the metrics directory ``fusion serve`` made for this server."""
    remove_private_metrics_dir(os.environ)
