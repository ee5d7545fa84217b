"""The HTTP test client of the server tests: ``aiohttp_client(make_test_server(app))``."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

__all__ = ["Client", "app_of"]

#: A client of a ``make_test_server`` server (a server, not an app, so ``client.app`` is None).
Client = TestClient[web.Request, None]


def app_of(client: Client) -> web.Application:
    """The application served to ``client``."""
    server = client.server
    assert isinstance(server, TestServer), f"not a TestServer: {server!r}"
    return server.app
