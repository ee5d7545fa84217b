"""The ceiling apps: bare aiohttp login (same body, same RS256 check, Vault-shaped reply) and hello.

Run: ``python bench/ceiling.py --mode login|hello|floor|lowlevel --port N [--pubkey FILE]``.
No mounts, no roles, no storage, no logging: what is left is aiohttp + JSON + python-jose,
so authmount's login can be expressed as a fraction of this. ``floor`` is below any
aiohttp application: an asyncio protocol that parses requests with aiohttp's own C parser
and writes the hello's bytes (``bench/floor.py`` puts it beside the hello and authmount).
``lowlevel`` is aiohttp's request machinery alone: its low-level ``web.Server`` (no
application, no router) answering with authmount's one-step ``JSONReply``, the least an
authmount request pays inside aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import secrets
import time
import uuid
from pathlib import Path

import orjson
import uvloop
from aiohttp import web
from jose import jwk, jws

AUDIENCE = "bench"
ROLE = "bench"
HELLO_BODY = orjson.dumps({"data": {"hello": "world"}})


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"errors": [message]}),
        content_type="application/json",
    )


def make_login_app(public_pem: str) -> web.Application:
    """The login ceiling: parse the login body, verify the JWT, answer like Vault does."""
    key = jwk.construct(public_pem, "RS256")  # built once, as authmount caches its keys

    async def login(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "failed to parse JSON input")
        if not isinstance(body, dict) or body.get("role") != ROLE:
            return _error(400, "role is missing or unknown")
        token = body.get("jwt")
        if not isinstance(token, str) or not token:
            return _error(400, "missing jwt")
        try:
            payload = orjson.loads(jws.verify(token, key, algorithms=["RS256"]))
        except Exception:  # jose raises several types; any of them is a rejected token
            return _error(400, "error validating token: invalid signature")
        now = time.time()
        if payload.get("exp", 0) <= now or payload.get("aud") != AUDIENCE:
            return _error(400, "error validating claims")
        sub = payload.get("sub")
        reply = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "wrap_info": None,
            "warnings": None,
            "auth": {
                "client_token": "hvs." + secrets.token_urlsafe(24),
                "accessor": secrets.token_urlsafe(18),
                "policies": ["default", "p"],
                "token_policies": ["default", "p"],
                "metadata": {"role": ROLE},
                "lease_duration": 2764800,
                "renewable": True,
                "entity_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(sub))),
                "token_type": "service",
                "orphan": True,
                "mfa_requirement": None,
                "num_uses": 0,
            },
            "mount_type": "",
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/auth/jwt/login", login)
    return app


def make_hello_app() -> web.Application:
    """The HTTP ceiling: a constant small JSON body on GET (and on lookup-self's path)."""
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(body=HELLO_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/v1/auth/token/lookup-self", hello)
    return app


class FloorProtocol(asyncio.Protocol):
    """The floor under every HTTP server here: aiohttp's C request parser on an asyncio
    protocol, and the hello's reply written as one prepared byte string. No request object,
    no task, no router, no response object. For measuring only: each request gets the same
    200 reply (a request with a body gets 400 and the connection closes)."""

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nServer: floor\r\nDate: " % len(HELLO_BODY)
    )
    REFUSED = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    _second = 0  # the second of the cached reply's Date
    _cached = b""

    def __init__(self) -> None:
        from aiohttp.http_parser import HttpRequestParser

        self._parser = HttpRequestParser(self, asyncio.get_running_loop(), 2**16)  # type: ignore[arg-type]
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @classmethod
    def _reply(cls) -> bytes:
        """The whole reply; its ``Date`` is rebuilt once a second, as aiohttp does."""
        now = int(time.time())
        if now != cls._second:
            date = email.utils.formatdate(now, usegmt=True).encode()
            cls._second, cls._cached = now, cls.HEAD + date + b"\r\n\r\n" + HELLO_BODY
        return cls._cached

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            messages, _, _ = self._parser.feed_data(data)
        except Exception:  # a malformed request: the parser's error, answered like one
            messages = None
        if messages is None:
            self.transport.write(self.REFUSED)
            self.transport.close()
            return
        for message, _payload in messages:
            if message.chunked or (message.headers.get("Content-Length", "0") != "0"):
                self.transport.write(self.REFUSED)
                self.transport.close()
                return
            self.transport.write(self._reply())
            if message.should_close:
                self.transport.close()
                return


async def serve_floor(host: str, port: int) -> None:
    """Serve ``FloorProtocol`` on ``host:port`` until cancelled."""
    server = await asyncio.get_running_loop().create_server(FloorProtocol, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


async def serve_lowlevel(host: str, port: int) -> None:
    """Serve the hello from aiohttp's low-level ``web.Server`` with ``JSONReply`` until cancelled."""
    from server.http.reply import JSONReply

    async def hello(_request: web.BaseRequest) -> web.StreamResponse:
        return JSONReply(HELLO_BODY)

    handler = web.Server(hello, access_log=None)
    server = await asyncio.get_running_loop().create_server(handler, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Parse flags and serve one ceiling app until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["login", "hello", "floor", "lowlevel"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pubkey", type=Path, help="PEM public key (login mode)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.mode in ("floor", "lowlevel"):
        serve = serve_floor if args.mode == "floor" else serve_lowlevel
        runner = uvloop.run if args.loop == "uvloop" else asyncio.run
        runner(serve(args.host, args.port))
        return
    if args.mode == "login":
        if args.pubkey is None:
            parser.error("--pubkey is required in login mode")
        app = make_login_app(args.pubkey.read_text())
    else:
        app = make_hello_app()
    loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else None
    # access_log=None: the ceiling does the least work possible per request.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else asyncio.new_event_loop(),
    )


if __name__ == "__main__":
    main()
