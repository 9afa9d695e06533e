"""The floor for any Python hop: a bare aiohttp + uvloop pass-through, no parsing, no checks.

It relays ``POST /v1/<path>`` to the upstream with one shared keep-alive connection pool and
copies the answer back byte for byte (streams included, chunk by chunk). Nothing else: no auth,
no validation, no logging, no metrics. ``bench/bench_peers.py`` runs it as the "floor" row.

    python bench/peers/floor_proxy.py --port 8091 --upstream http://127.0.0.1:8089/v1
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def make_app(upstream: str) -> web.Application:
    """The proxy application relaying to ``upstream`` (a base URL ending in ``/v1``)."""
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[session_key] = session
            yield

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}
        url = f"{upstream}/{request.match_info['path']}"
        async with app[session_key].post(url, data=body, headers=headers) as reply:
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
            if reply.content_type != "text/event-stream":
                return web.Response(body=await reply.read(), status=reply.status, headers=kept)
            response = web.StreamResponse(status=reply.status, headers=kept)
            await response.prepare(request)
            async for chunk in reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/v1/{path:.*}", relay)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8089/v1")
    args = parser.parse_args()
    app = make_app(args.upstream.rstrip("/"))
    try:
        import uvloop
    except ImportError:  # uvloop ships with uvicorn[standard]; plain asyncio otherwise
        asyncio.run(_serve(app, args.host, args.port))
    else:
        uvloop.run(_serve(app, args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
