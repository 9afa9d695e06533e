"""The gunicorn worker: uvicorn's, with request heads bounded (``http_guard``) and gunicorn's
quick shutdown (SIGQUIT) actually stopping it.

``uvicorn_worker.UvicornWorker`` answers SIGQUIT with gunicorn's ``handle_exit``, which only
sets a flag nothing reads (Kludex/uvicorn-worker#2): after SIGINT/SIGQUIT to the master the
workers kept serving until ``graceful_timeout`` and were then killed mid-request. Here SIGQUIT
asks the uvicorn server to exit, so in-flight requests finish and the worker stops.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from .http_guard import GuardedHttpToolsProtocol


class GatewayWorker(UvicornWorker):  # type: ignore[misc]
    """UvicornWorker (uvloop, httptools with head limits) whose SIGQUIT stops the server."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": GuardedHttpToolsProtocol,
    }

    async def _serve(self) -> None:
        # Mirrors UvicornWorker._serve (uvicorn-worker 0.3/0.4) with the SIGQUIT handler fixed.
        self.config.app = self.wsgi
        server = Server(config=self.config)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None
        )
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
