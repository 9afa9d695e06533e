"""``POST /v1/chat/completions``: fused for ``fusion/<panel>``, passed through otherwise."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from .admission import admit
from .answers import serve_chat


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="OpenAI-compatible chat completion",
)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    """Fuse a panel's answers for ``fusion/<panel>`` (or ``fusion-<panel>``); pass any other
    model through."""
    admitted = await admit(request)
    return await serve_chat(request, admitted, admitted.body)
