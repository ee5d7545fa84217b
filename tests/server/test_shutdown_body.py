"""Graceful shutdown: a request whose body is still arriving is finished (aiohttp drops the
body), and a connection that starts as shutdown begins is closed at once (aiohttp left it
waiting the whole shutdown timeout)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from server.http.listverb import ListVerbAppRunner, ListVerbRequestHandler


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def test_body_arriving_during_shutdown_is_read_and_answered() -> None:
    app = web.Application()
    app.router.add_post("/", echo)
    runner = ListVerbAppRunner(app, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now waiting for the rest of the body
    cleanup = asyncio.create_task(runner.cleanup())
    await asyncio.sleep(0.2)  # shutdown has marked the connection closing
    writer.write(b"world")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    await asyncio.wait_for(cleanup, timeout=15)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"helloworld")


async def test_connection_whose_first_turn_starts_after_shutdown_began_is_closed_at_once() -> None:
    """A connection accepted as shutdown begins: aiohttp marks every connection closing
    (``pre_shutdown``) before this one's protocol first runs, so it waited for a request
    that aiohttp drops while closing, and ``shutdown`` waited for it the whole shutdown
    timeout (30 s by default) with the client's request unanswered. Found by
    tests/e2e/test_crash_restart.py under load. Now it is closed at once: the client sees
    the connection close and may retry elsewhere."""
    app = web.Application()
    app.router.add_post("/", echo)
    runner = ListVerbAppRunner(app, shutdown_timeout=10)
    await runner.setup()
    assert runner.server is not None
    server: web.Server = runner.server
    loop = asyncio.get_running_loop()

    class RacingShutdown(ListVerbRequestHandler):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            server.pre_shutdown()  # before this connection's first turn

    ours, theirs = socket.socketpair()
    try:
        await loop.connect_accepted_socket(lambda: RacingShutdown(server, loop=loop), ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(server.shutdown(10), timeout=3)
        assert await asyncio.wait_for(reader.read(), timeout=3) == b""  # closed, not left hanging
        writer.close()
    finally:
        await runner.cleanup()
