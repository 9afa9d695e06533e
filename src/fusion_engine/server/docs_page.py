"""The ``/docs`` page and the OpenAPI config that serves it with the schema.

The page is Scalar's standalone bundle from a CDN, pinned to one exact version and checked by
the browser against a subresource-integrity hash, under a Content-Security-Policy that allows that
one script and nothing else: a CDN or a version that changed under us cannot run code on the
gateway's origin (where the web page keeps its bearer key).
"""

from __future__ import annotations

import html
from typing import Any

import msgspec
from litestar import Request, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

#: The pinned Scalar release. To move it: ``npm pack @scalar/api-reference@<version>``, then
#: ``openssl dgst -sha384 -binary package/dist/browser/standalone.js | openssl base64 -A``
#: gives the new hash (jsDelivr serves npm files byte for byte at an explicit path).
SCALAR_VERSION = "1.76.4"
SCALAR_URL = (
    f"https://cdn.jsdelivr.net/npm/@scalar/api-reference@{SCALAR_VERSION}"
    "/dist/browser/standalone.js"
)
SCALAR_INTEGRITY = "sha384-hwB9WroDTpZaI38gr+u9CXA6ksz5gUYgD2GxXazKl/agT1L2GWUiRFWGJYNiFu4Q"

#: Only the pinned script runs; Scalar injects its own stylesheets and style attributes at run
#: time (CSS cannot run script), fetches the schema and tries requests on this origin only, and
#: its web fonts are turned off (see ``_SCALAR_CONFIGURATION``) so nothing else is fetched.
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {SCALAR_URL}",
        "style-src 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'none'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_DOCS_HEADERS = {
    "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Read by Scalar from the element's ``data-configuration`` attribute: no inline script needed.
#: Everything that would reach another origin is off (fonts, telemetry, its hosted AI agent,
#: its developer toolbar's deploy/SDK links); the CSP would block it anyway.
_SCALAR_CONFIGURATION: dict[str, object] = {
    "withDefaultFonts": False,
    "telemetry": False,
    "showDeveloperTools": "never",
    "agent": {"disabled": True},
}
DOCS_PATH = "/docs"


class PinnedScalar(ScalarRenderPlugin):
    """Scalar's page with the pinned, integrity-checked bundle and no other external resource."""

    def __init__(self) -> None:
        super().__init__(js_url=SCALAR_URL, path="/scalar", favicon="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page: the schema's URL and options as data attributes, then the pinned script."""
        title = html.escape(str(openapi_schema["info"]["title"]))
        schema_url = html.escape(self.get_openapi_json_route(request))
        configuration = html.escape(msgspec.json.encode(_SCALAR_CONFIGURATION).decode())
        # The data element is empty (not even whitespace), so the browser never treats it as an
        # inline script the CSP would have to refuse.
        page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
</head>
<body>
<noscript>The API reference needs JavaScript; the schema itself is at {schema_url}.</noscript>
<script id="api-reference" data-url="{schema_url}" data-configuration="{configuration}"></script>
<script src="{SCALAR_URL}" integrity="{SCALAR_INTEGRITY}" crossorigin="anonymous"></script>
</body>
</html>
"""
        return page.encode()


def openapi_config(*, version: str) -> OpenAPIConfig:
    """The OpenAPI config: schema at ``/docs/openapi.json``, the pinned Scalar page at ``/docs``."""
    return OpenAPIConfig(
        title="Fusion Engine",
        version=version,
        description="OpenAI-compatible gateway that fuses a panel of models into one answer.",
        path=DOCS_PATH,
        render_plugins=[PinnedScalar()],
        openapi_router=Router(
            DOCS_PATH,
            route_handlers=[],
            include_in_schema=False,
            response_headers=_DOCS_HEADERS,
        ),
    )
