"""How a write's body is read (docs/api.md, "Request body"), as Vault reads it: JSON whatever
the content type, except a urlencoded form that does not start with ``{``; ``multipart/form-data``
is not a form to Vault (OpenBao 2.7.2: ``failed to decode JSON input``) and not to authmount."""

from __future__ import annotations

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client

ROOT = "root-token-for-bodies"
H = {"X-Vault-Token": ROOT}
POLICY = 'path "x" { capabilities = ["read"] }'


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


@pytest.mark.parametrize(
    ("body", "ctype", "status", "errors"),
    [
        ('{"policy": "' + POLICY.replace('"', '\\"') + '"}', "application/json", 204, None),
        ('{"policy": "' + POLICY.replace('"', '\\"') + '"}', "application/x-www-form-urlencoded", 204, None),
        ("policy=" + POLICY.replace(" ", "+").replace('"', "%22"), "application/x-www-form-urlencoded", 204, None),
        ("policy=x", "application/json", 400, ["error parsing JSON"]),
        ("policy=x", "text/plain", 400, ["error parsing JSON"]),
        ('--b\r\nContent-Disposition: form-data; name="policy"\r\n\r\nx\r\n--b--\r\n', "multipart/form-data; boundary=b",
         400, ["error parsing JSON"]),
    ],
    ids=["json", "json as a form type (curl -d)", "form", "form sent as json", "text", "multipart"],
)
async def test_write_bodies(client: Client, body: str, ctype: str, status: int, errors: list[str] | None) -> None:
    resp = await client.put("/v1/sys/policies/acl/p", data=body.encode(), headers={**H, "Content-Type": ctype})
    assert resp.status == status
    if errors is not None:
        assert (await resp.json())["errors"] == errors
    else:
        got = await client.get("/v1/sys/policies/acl/p", headers=H)
        assert (await got.json())["data"]["policy"] == POLICY
