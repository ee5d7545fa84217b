"""The HTTP test client of the server tests: ``aiohttp_client(make_test_server(app))``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings

__all__ = ["Client", "app_of", "dev_client", "answer"]

#: A client of a ``make_test_server`` server (a server, not an app, so ``client.app`` is None).
Client = TestClient[web.Request, None]


def app_of(client: Client) -> web.Application:
    """The application served to ``client``."""
    server = client.server
    assert isinstance(server, TestServer), f"not a TestServer: {server!r}"
    return server.app


async def dev_client(aiohttp_client: AiohttpClient, root: str, **settings: Any) -> Client:
    """A client of a ``--dev`` server in memory whose root token is ``root`` (``settings``: more)."""
    app = create_app(Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=root,
                              **settings))
    client: Client = await aiohttp_client(make_test_server(app))
    return client


async def answer(client: Client, method: str, path: str, body: Any = None, *, token: str) -> tuple[int, Any]:
    """The status and the JSON body (None when empty) of ``method /v1/<path>`` with ``token``."""
    resp = await client.request(method, "/v1/" + path, json=body, headers={"X-Vault-Token": token})
    text = await resp.text()
    return resp.status, (await resp.json() if text else None)
