"""Graceful shutdown finishes a request whose body is still arriving (aiohttp drops it)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.http.listverb import ListVerbAppRunner


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
