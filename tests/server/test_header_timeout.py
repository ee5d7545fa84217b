"""Slow request headers (slowloris): a header block must complete within HEADER_TIMEOUT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.http import listverb
from server.http.listverb import RequestFramer, make_test_server


@pytest.mark.parametrize(
    ("chunks", "pending"),
    [
        ([b"GET /v1/sys/health HTTP/1.1\r\nHo"], True),
        ([b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n"], False),
        ([b"GET /v1/sys/health HTTP/1.1\r\n", b"Host: x\r\n\r\n"], False),
        ([b"POST /v1/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"], False),
    ],
    ids=["partial head", "whole request", "head in two reads", "partial body is not a head"],
)
def test_head_pending(chunks: list[bytes], pending: bool) -> None:
    framer = RequestFramer()
    for chunk in chunks:
        framer.feed(chunk)
    assert framer.head_pending() is pending


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestServer]:
    monkeypatch.setattr(listverb, "HEADER_TIMEOUT", 0.3)
    app = web.Application()
    app.router.add_get("/", hello)
    srv = make_test_server(app)
    await srv.start_server()
    yield srv
    await srv.close()


async def test_trickled_headers_are_cut_off(server: TestServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET / HTTP/1.1\r\n")
    await writer.drain()
    closed = False
    for _ in range(40):  # keep trickling a header line every 0.1 s, far past the deadline
        await asyncio.sleep(0.1)
        try:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        if reader.at_eof():
            closed = True
            break
    if not closed:
        closed = await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    assert closed


async def test_whole_requests_on_a_kept_alive_connection_are_served(server: TestServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    for _ in range(3):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(2), timeout=5)
        await asyncio.sleep(0.4)  # idle between requests longer than the header deadline
    writer.close()
