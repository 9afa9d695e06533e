"""The web page at ``/ui``: plain HTML, CSS and ES modules shipped inside the package.

No build step: the files in ``static/`` are what the browser runs, and they travel in the wheel
as package data, so ``fusion serve`` and the Docker image serve the page with no extra setup.
The page talks to the gateway's own HTTP API (``GET /panels``, streamed ``POST /fuse``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

#: Where the page's files live (inside the installed package).
STATIC_DIR = Path(__file__).parent / "static"

#: The page runs only its own scripts and talks only to its own origin, so model output that
#: slipped past the Markdown renderer's escaping still could not run or phone home.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def ui_router() -> Router:
    """The ``/ui`` route: ``index.html`` at ``/ui`` and ``/ui/``, its assets below."""
    return create_static_files_router(
        path="/ui",
        directories=[STATIC_DIR],
        html_mode=True,
        name="ui",
        # Revalidate on every load (ETag / Last-Modified), so an upgrade is picked up at once.
        cache_control=CacheControlHeader(no_cache=True),
        after_request=_security_headers,
        include_in_schema=False,
    )


def _security_headers(response: Any) -> Any:
    for name, value in _HEADERS.items():
        response.headers[name] = value
    return response
