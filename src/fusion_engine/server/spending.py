"""``GET /v1/spend``: the caller's own spend, budget and what is left of it."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from ..spend import SpendReport
from .admission import admit
from .errors import json_response
from .gateway import gateway_of
from .openapi import documented, error_replies, json_reply, schema_of


@get(
    "/v1/spend",
    summary="The calling key's spend and budget",
    operation_class=documented(
        {
            "200": json_reply("The key's spend and budget.", schema_of(SpendReport)),
            **error_replies(401, 429, 503),
        }
    ),
)
async def own_spend(request: Request[Any, Any, Any]) -> Response[bytes]:
    """What the calling key name has spent (today, this month, in all), and its budget."""
    admitted = await admit(request, read_body=False)
    return json_response(await gateway_of(request).ledger.report(admitted.policy))
