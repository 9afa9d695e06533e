"""``create_app``: the Litestar application, built from settings with no import-time state."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.types import ExceptionHandlersMap

from .. import __version__, tracing
from ..engine import FusionEngine
from ..settings import Settings
from .admission import keyless_guard
from .chat import chat_completions
from .docs_page import openapi_config
from .errors import EXCEPTION_HANDLERS
from .fuse import fuse
from .gateway import Gateway
from .info import health, list_panels, metrics_route, ready, show_panel
from .logs import configure_logging
from .messages import count_message_tokens, create_message
from .models import embeddings, list_models, retrieve_model
from .observe import request_observer
from .openapi import (
    chat_operation,
    count_tokens_operation,
    described,
    fuse_operation,
    messages_operation,
    responses_operation,
)
from .reload import watch_definitions
from .request_id import add_request_id
from .responses import create_response, delete_response, retrieve_response
from .runs import ClientGone
from .spending import own_spend
from .ui import ui_router

log = structlog.get_logger("fusion_engine.server")
#: nginx's "client closed request": logged, never seen by the client that left.
CLIENT_CLOSED = 499
#: How long the lifespan's cleanup may take: background tasks that do not stop when
#: cancelled (redis-py can swallow a cancel) are abandoned after it, never awaited forever.
SHUTDOWN_BUDGET_S = 3.0


def create_app(settings: Settings | None = None, *, engine: FusionEngine | None = None) -> Litestar:
    """Build the gateway.

    Panels, judge templates and the gateway config are loaded here, before the app serves,
    so a broken set fails at start with a message naming the file and field.

    Args:
        settings: process settings (default: read from ``os.environ`` once).
        engine: a ready engine (tests inject one); default: built from the settings.

    Raises:
        ConfigError: the config, a panel or a judge template is invalid.
    """
    settings = settings or Settings.from_environ(os.environ)
    engine = engine or FusionEngine(settings=settings)
    gateway = Gateway(settings, engine)

    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # Per worker (after gunicorn's fork): the exporter's thread belongs to this process.
        tracing.start(os.environ)
        gateway.start()
        # What start-up built (modules, the app, panels) lives as long as the worker: frozen
        # out of the collector's sight, a full collection no longer walks all of it again.
        gc.freeze()
        background = [
            asyncio.create_task(gateway.share_prices()),
            asyncio.create_task(gateway.ledger.flush_forever()),
        ]
        if settings.reload_interval_s > 0:
            background.append(
                asyncio.create_task(watch_definitions(gateway, settings.reload_interval_s))
            )
        try:
            yield
        finally:
            await _shut_down(gateway, background, SHUTDOWN_BUDGET_S)
            # Spans still buffered are exported now (blocking: in a thread, off the loop).
            await asyncio.to_thread(tracing.shutdown)

    exception_handlers: ExceptionHandlersMap = {**EXCEPTION_HANDLERS, ClientGone: _client_gone}
    limits = engine.config.gateway.limits
    return Litestar(
        route_handlers=[
            described(chat_completions, chat_operation(limits)),
            described(fuse, fuse_operation(limits, engine.config.providers.keys())),
            described(create_response, responses_operation(limits)),
            retrieve_response,
            delete_response,
            described(create_message, messages_operation(limits)),
            described(count_message_tokens, count_tokens_operation(limits)),
            list_models,
            retrieve_model,
            own_spend,
            embeddings,
            list_panels,
            show_panel,
            health,
            ready,
            metrics_route(public=engine.config.gateway.metrics_public),
            ui_router(),
        ],
        middleware=[request_observer(gateway.metrics)],
        lifespan=[lifespan],
        state=State({"gateway": gateway}),
        exception_handlers=exception_handlers,
        before_request=keyless_guard(settings, gateway.keys),
        before_send=[add_request_id],
        request_max_body_size=engine.config.gateway.limits.max_body_bytes,
        openapi_config=openapi_config(version=__version__),
        logging_config=None,
    )


async def _shut_down(
    gateway: Gateway, background: list[asyncio.Task[None]], budget_s: float
) -> None:
    """Stop the background tasks and close the gateway, within ``budget_s`` in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    for task in background:
        task.cancel()
    # asyncio.wait, not gather: a task that swallows its cancel is left behind, not awaited.
    _, stuck = await asyncio.wait(background, timeout=budget_s / 2)
    if stuck:
        log.warning("background_tasks_abandoned", count=len(stuck))
    try:
        async with asyncio.timeout_at(deadline):
            await gateway.aclose()
    except TimeoutError:
        log.warning("shutdown_cleanup_timed_out", budget_s=budget_s)


def create_app_from_env() -> Litestar:
    """Factory for ASGI servers (``gunicorn 'fusion_engine.server.app:create_app_from_env()'``)."""
    return create_app(Settings.from_environ(os.environ))


def _client_gone(request: Request[Any, Any, Any], exc: ClientGone) -> Response[bytes]:
    return Response(content=b"", status_code=CLIENT_CLOSED)
