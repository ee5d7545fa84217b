"""A tiny JWKS server whose response delay can be changed at runtime (the "slow IdP").

Run: ``python bench/jwks_server.py --port N --jwks FILE``; ``POST /control?delay=SECONDS``
sets the delay of every later ``GET /jwks.json``; ``GET /stats`` reports how often it was hit.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from aiohttp import web


def make_app(jwks_body: bytes) -> web.Application:
    """JWKS endpoint plus a control endpoint for the delay."""
    state = {"delay": 0.0, "hits": 0}

    async def jwks(_request: web.Request) -> web.Response:
        state["hits"] += 1
        if state["delay"] > 0:
            await asyncio.sleep(state["delay"])
        return web.Response(body=jwks_body, content_type="application/json")

    async def control(request: web.Request) -> web.Response:
        state["delay"] = float(request.query.get("delay", "0"))
        return web.json_response({"delay": state["delay"]})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the JWKS file until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.jwks.read_bytes()), host="127.0.0.1", port=args.port,
                access_log=None, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
