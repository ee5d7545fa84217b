"""CORS (``sys/config/cors``): off until enabled; then an origin not listed is refused on
every path, a listed one gets the CORS headers on its answers (errors too) and its preflights
answered; Vault's API and texts, and the two refusals Vault lacks (docs/vault-differences.md
row 69)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.cors import STANDARD_HEADERS
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client

ROOT = "root-token-for-cors-tests"
H = {"X-Vault-Token": ROOT}
APP = "https://app.example.com"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    c: Client = await aiohttp_client(make_test_server(create_app(settings)))
    return c


async def configure(client: Client, **body: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/sys/config/cors", json=body, headers=H)
    return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_off_until_enabled(client: Client) -> None:
    resp = await client.get("/v1/sys/config/cors", headers=H)
    out = await resp.json()
    assert (out["data"], out["enabled"]) == ({"enabled": False}, False)
    resp = await client.get("/v1/sys/health", headers={"Origin": "https://anyone.example.com"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    preflight = await client.options("/v1/sys/health", headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert preflight.status == 405


async def test_an_allowed_origin_gets_the_headers_and_its_preflights(client: Client) -> None:
    assert await configure(client, allowed_origins=APP, allowed_headers="X-Custom") == (204, None)
    data = (await (await client.get("/v1/sys/config/cors", headers=H)).json())["data"]
    assert data == {"allow_credentials": False, "allowed_headers": [*STANDARD_HEADERS, "X-Custom"],
                    "allowed_origins": [APP], "enabled": True}
    resp = await client.get("/v1/sys/health", headers={"Origin": APP})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Vary"] == "Origin" and "Access-Control-Allow-Credentials" not in resp.headers
    denied = await client.get("/v1/sys/mounts", headers={"Origin": APP, "X-Vault-Token": "nope"})
    assert denied.status == 403 and denied.headers["Access-Control-Allow-Origin"] == APP  # the page reads why
    preflight = await client.options("/v1/auth/jwt/login", headers={"Origin": APP, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 200 and preflight.headers["Access-Control-Max-Age"] == "300"
    assert preflight.headers["Access-Control-Allow-Methods"] == "DELETE,GET,OPTIONS,POST,PUT,LIST,HEAD"
    assert preflight.headers["Access-Control-Allow-Headers"].split(",")[-1] == "X-Custom"
    odd = await client.options("/v1/sys/health", headers={"Origin": APP, "Access-Control-Request-Method": "PATCH"})
    assert odd.status == 405
    no_origin = await client.get("/v1/sys/health")  # the CLI, hvac, curl: served as always
    assert no_origin.status == 200 and "Access-Control-Allow-Origin" not in no_origin.headers


@pytest.mark.parametrize("path", ["sys/health", "sys/mounts", "auth/token/lookup-self", "identity/group/id",
                                  "no/such/path"])
async def test_an_origin_not_listed_is_refused_everywhere(client: Client, path: str) -> None:
    await configure(client, allowed_origins=[APP])
    resp = await client.get(f"/v1/{path}", headers={"Origin": "https://evil.example.com", **H})
    assert resp.status == 403 and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": ["origin not allowed"]}
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_credentials_and_the_wildcard(client: Client) -> None:
    assert await configure(client, allowed_origins=[APP, "http://localhost:3000"], allow_credentials=True) == (204, None)
    resp = await client.get("/v1/sys/health", headers={"Origin": "http://localhost:3000"})
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert await configure(client, allowed_origins="*") == (204, None)
    resp = await client.get("/v1/sys/health", headers={"Origin": "https://anyone.example.com"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://anyone.example.com"


@pytest.mark.parametrize(("body", "message"), [
    ({"allowed_origins": []}, "at least one origin or the wildcard must be provided"),
    ({}, "at least one origin or the wildcard must be provided"),
    ({"allowed_origins": ["*", APP]}, "to allow all origins the '*' must be the only value for allowed_origins"),
    ({"allowed_origins": "*", "allow_credentials": True}, "allow_credentials cannot be true when every origin"),
    ({"allowed_origins": APP + "/"}, f'invalid origin "{APP}/": an origin is scheme://host[:port]'),
    ({"allowed_origins": "app.example.com"}, 'invalid origin "app.example.com"'),
    ({"allowed_origins": "https://app.example.com:99999"}, "invalid origin"),
])
async def test_refusals_leave_the_settings_as_they_were(client: Client, body: dict[str, Any], message: str) -> None:
    await configure(client, allowed_origins=[APP])
    status, out = await configure(client, **body)
    assert status == 400 and out["errors"][0].startswith(message), out
    assert (await (await client.get("/v1/sys/config/cors", headers=H)).json())["data"]["allowed_origins"] == [APP]


async def test_delete_turns_it_off_and_sudo_is_needed(client: Client) -> None:
    await configure(client, allowed_origins=[APP])
    resp = await client.post("/v1/sys/policies/acl/cors", headers=H,
                             json={"policy": 'path "sys/config/cors" { capabilities = ["read", "update", "delete"] }'})
    assert resp.status == 204
    token = (await (await client.post("/v1/auth/token/create", json={"policies": ["cors"]}, headers=H)).json())[
        "auth"]["client_token"]
    for method in ("GET", "POST", "DELETE"):
        resp = await client.request(method, "/v1/sys/config/cors", headers={"X-Vault-Token": token},
                                    json={"allowed_origins": "*"})
        assert resp.status == 403, method  # sudo, as in Vault
    assert (await client.delete("/v1/sys/config/cors", headers=H)).status == 204
    assert (await (await client.get("/v1/sys/config/cors", headers=H)).json())["data"] == {"enabled": False}
    resp = await client.get("/v1/sys/health", headers={"Origin": "https://evil.example.com"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
