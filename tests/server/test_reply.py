"""``JSONReply`` puts on the wire the bytes ``web.Response`` would, and takes its one-step
path only where nothing else was asked of the response."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.http.reply import JSON, JSONReply

BODY = b'{"data":{"hello":"world"}}'

Make = Callable[[bytes, int], web.Response]


def _aiohttp(body: bytes, status: int) -> web.Response:
    reply = web.Response(body=body, status=status, content_type=JSON)
    reply.headers["Cache-Control"] = "no-store"
    return reply


async def _serve(make: Make, made: list[web.Response], status: int = 200,
                 tweak: Callable[[web.Response], None] | None = None) -> TestServer:
    async def handler(_request: web.Request) -> web.Response:
        reply = make(BODY, status)
        if tweak is not None:
            tweak(reply)
        made.append(reply)
        return reply

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def _wire(port: int, raw: bytes, replies: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        out = b""
        while out.count(b"HTTP/1.") < replies or not out.endswith((BODY, b"\r\n\r\n")):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            out += chunk
        return re.sub(rb"Date: [^\r]*", b"Date: -", out)
    finally:
        writer.close()


GET11 = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
CASES = {
    "keep-alive": (GET11, 1),
    "two on one connection": (GET11 + GET11, 2),
    "close": (b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 1),
    "HTTP/1.0": (b"GET /x HTTP/1.0\r\n\r\n", 1),
    "HTTP/1.0 keep-alive": (b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1),
    "HEAD": (b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", 1),
    "POST with a body": (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}", 1),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("status", [200, 400, 403, 404, 204, 304, 503])
async def test_the_same_bytes_as_web_response(case: str, status: int) -> None:
    raw, replies = CASES[case]
    wires = []
    for make in (_aiohttp, JSONReply):
        server = await _serve(make, [], status)
        try:
            wires.append(await _wire(server.port or 0, raw, replies))
        finally:
            await server.close()
    assert wires[0] == wires[1]
    assert wires[0].count(b"HTTP/1.") == replies


@pytest.mark.parametrize(
    "tweak",
    [
        lambda r: r.headers.update({"Retry-After": "1"}),
        lambda r: r.force_close(),
        lambda r: r.set_status(201),
        lambda r: setattr(r, "content_type", "text/plain"),
        lambda r: r.set_cookie("a", "b"),
    ],
    ids=["extra header", "force_close", "set_status", "content type", "cookie"],
)
async def test_what_callers_change_on_the_reply_reaches_the_wire(tweak: Callable[[web.Response], None]) -> None:
    wires = []
    for make in (_aiohttp, JSONReply):
        server = await _serve(make, [], tweak=tweak)
        try:
            wires.append(await _wire(server.port or 0, GET11))
        finally:
            await server.close()
    assert wires[0] == wires[1]


async def test_the_one_step_path_is_taken_for_a_plain_reply_only() -> None:
    made: list[web.Response] = []
    server = await _serve(JSONReply, made)
    try:
        await _wire(server.port or 0, GET11)
        await _wire(server.port or 0, b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    finally:
        await server.close()
    assert [r._lean for r in made if isinstance(r, JSONReply)] == [True, False]


def test_it_is_a_web_response_with_the_json_content_type() -> None:
    reply = JSONReply(BODY, 404)
    assert isinstance(reply, web.Response)
    assert (reply.status, reply.content_type, reply.charset, reply.body) == (404, JSON, None, BODY)
