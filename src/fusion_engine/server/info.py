"""Read-only routes: panels, health and readiness (no key needed)."""

from __future__ import annotations

import os
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get

from ..errors import UnknownPanelError
from ..panels import Panel
from ..plan import panel_of_model
from .auth import authenticate
from .errors import json_response
from .gateway import gateway_of
from .openapi import documented, error_replies, json_reply, schema_of, text_reply


class PanelList(msgspec.Struct, frozen=True):
    """``GET /panels``."""

    data: list[Panel]
    object: str = "list"


class Health(msgspec.Struct, frozen=True):
    """``GET /health``: liveness and what is configured."""

    status: str
    provider_key_configured: bool
    panels: int
    cache: str
    version: str
    #: The worker process that answered (several workers share one port).
    pid: int


class Readiness(msgspec.Struct, frozen=True):
    """``GET /ready``: ``ready``, or ``unavailable`` (with a 503) while draining."""

    status: Literal["ready", "unavailable"]


@get(
    "/panels",
    summary="Every loaded panel",
    operation_class=documented({"200": json_reply("The panels.", schema_of(PanelList))}),
)
async def list_panels(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The panels with members, judge and estimated cost."""
    return json_response(PanelList(data=list(gateway_of(request).engine.panels.values())))


@get(
    "/panels/{name:str}",
    summary="One panel",
    operation_class=documented(
        {"200": json_reply("The panel.", schema_of(Panel)), **error_replies(404)}
    ),
)
async def show_panel(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    """One panel by name (``fusion/`` or ``fusion-`` prefix allowed)."""
    panels = gateway_of(request).engine.panels
    panel = panels.get(panel_of_model(name) or name)
    if panel is None:
        raise UnknownPanelError(f"unknown panel {name!r}", param="name")
    return json_response(panel)


@get(
    "/health",
    summary="Liveness",
    operation_class=documented({"200": json_reply("The process serves.", schema_of(Health))}),
)
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 while the process serves; says whether the provider key is set."""
    from .. import __version__

    gateway = gateway_of(request)
    return json_response(
        Health(
            status="ok",
            provider_key_configured=gateway.config.default_provider.api_key is not None,
            panels=len(gateway.engine.panels),
            cache=gateway.settings.cache_backend,
            version=__version__,
            pid=os.getpid(),
        )
    )


def metrics_route(*, public: bool) -> Any:
    """``GET /metrics``; behind the API key when the config says ``metrics_public: false``."""

    replies = {"200": text_reply("Prometheus' text format.", "text/plain")}
    if not public:
        replies.update(error_replies(401))

    @get("/metrics", summary="Prometheus metrics", operation_class=documented(replies))
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Every ``fusion_*`` family, summed over the workers."""
        if not public:
            authenticate(request)
        body, content_type = gateway_of(request).metrics.exposition()
        # Litestar adds the charset itself; prometheus-client's type already names one.
        media_type = content_type.replace("; charset=utf-8", "")
        return Response(content=body, media_type=media_type)

    return metrics


@get(
    "/ready",
    summary="Readiness",
    operation_class=documented(
        {
            "200": json_reply("Panels are loaded.", schema_of(Readiness)),
            "503": json_reply("Draining (or not started).", schema_of(Readiness)),
        }
    ),
)
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 once panels are loaded (they load before the app serves) unless draining, else 503."""
    gateway = gateway_of(request)
    if gateway.draining:
        return json_response({"status": "unavailable"}, 503)
    return json_response({"status": "ready"})
