"""The HTTP adapter, envelope, sys endpoints and ACL checks against ``create_app``."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from plugin import registry
from plugin.errors import InvalidRequest
from plugin.framework import Auth, Backend, Operation, PathSpec, Request, Response
from plugin.pathdoc import VERSION
from plugin.schema import Field, FieldSet, FieldType
from plugin.storage import InMemoryStorage
from server import telemetry
from server.app import create_app
from server.appkeys import MOUNTS, STORAGE
from server.http.listverb import ListVerbAppRunner, make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-tests"


class EchoBackend(Backend):
    """A tiny auth method: unauthenticated ``login``, ``item/<name>`` CRUD, ``echo``."""

    type_name = "echo"

    def __init__(self) -> None:
        super().__init__()
        name = {"name": Field(FieldType.NAME, "Item name.")}
        value = {"value": Field(FieldType.STRING, "Item value.")}
        self.items: dict[str, str] = {}
        self.paths = [
            PathSpec("login", FieldSet({"policies": Field(FieldType.COMMA_STRING_SLICE, "Policies."),
                                        "secret": Field(FieldType.STRING, "A response-only secret.")}),
                     {Operation.UPDATE: self._login}, unauthenticated=True, issues_token=True),
            PathSpec(r"item/?", FieldSet({}), {Operation.LIST: self._list}),
            PathSpec(r"item/(?P<name>\w+)", FieldSet({**name, **value}),
                     {Operation.READ: self._read, Operation.UPDATE: self._write, Operation.DELETE: self._delete},
                     existence_check=self._exists),
            PathSpec("echo", FieldSet({}), {Operation.UPDATE: self._echo, Operation.READ: self._echo}),
            PathSpec("raw", FieldSet({}), {Operation.READ: self._raw}, unauthenticated=True),
            PathSpec("refuse", FieldSet({}), {Operation.UPDATE: self._refuse}, unauthenticated=True),
            PathSpec("boom", FieldSet({}), {Operation.READ: self._boom}),
        ]

    async def _login(self, req: Request, values: dict[str, Any]) -> Response:
        secret = values.get("secret")
        return Response(auth=Auth(display_name="tester", policies=values.get("policies", []), ttl=600,
                                  metadata={"who": "tester"},
                                  response_metadata={"oauth2_access_token": secret} if secret else {}))

    async def _list(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"keys": sorted(await req.require_storage().list("item/"))})

    async def _exists(self, req: Request, values: dict[str, Any]) -> bool:
        return await req.require_storage().get("item/" + values["name"]) is not None

    async def _read(self, req: Request, values: dict[str, Any]) -> Response | None:
        value = await req.require_storage().get("item/" + values["name"])
        return None if value is None else Response(data={"value": value})

    async def _write(self, req: Request, values: dict[str, Any]) -> None:
        if values.get("value") == "bad":
            raise InvalidRequest("value must not be bad")
        await req.require_storage().put("item/" + values["name"], values.get("value", ""))

    async def _delete(self, req: Request, values: dict[str, Any]) -> None:
        await req.require_storage().delete("item/" + values["name"])

    async def _echo(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(data={
            "data": req.data, "remote": req.connection.remote_addr if req.connection else None,
            "has_token": req.token is not None, "headers": sorted(req.headers),
        })

    async def _raw(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(raw_body=b"<html>ok</html>", status=200, content_type="text/html; charset=utf-8")

    async def _refuse(self, req: Request, values: dict[str, Any]) -> Response:
        """A login refused with a page (as the OIDC callback's pages are)."""
        exc = InvalidRequest("login refused")
        exc.check = "bound_claims"
        exc.login = {"role": "tester", "iss": "https://idp.example.com", "sub": "bob"}
        page = Response(raw_body=b"<html>no</html>", status=400, content_type="text/html; charset=utf-8")
        page.refused = exc
        return page

    async def _boom(self, req: Request, values: dict[str, Any]) -> Response:
        raise RuntimeError("secret internal detail")


registry.register("echo", EchoBackend)


def make_settings(**overrides: Any) -> Settings:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_test_server(create_app(make_settings())))


@pytest.fixture
async def echo(client: Client) -> Client:
    resp = await client.post("/v1/sys/auth/echo", json={"type": "echo"}, headers=H)
    assert resp.status == 204
    return client


H = {"X-Vault-Token": ROOT}


async def login(client: Client, policies: str = "") -> str:
    resp = await client.post("/v1/auth/echo/login", json={"policies": policies})
    assert resp.status == 200
    token = (await resp.json())["auth"]["client_token"]
    assert isinstance(token, str)
    return token


# -- health ------------------------------------------------------------------------------
async def test_health_get_is_unauthenticated(client: Client) -> None:
    resp = await client.get("/v1/sys/health")
    body = await resp.json()
    assert resp.status == 200
    assert body["initialized"] is True and body["sealed"] is False and body["standby"] is False
    assert {"server_time_utc", "version", "cluster_name", "cluster_id"} <= set(body)


async def test_health_head(client: Client) -> None:
    resp = await client.head("/v1/sys/health")
    assert resp.status == 200
    assert await resp.read() == b""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/sys/seal-status", {"initialized": True, "sealed": False, "type": "shamir", "t": 1, "n": 1,
                                 "progress": 0, "storage_type": "inmem", "cluster_name": "authmount"}),
        ("/v1/sys/init", {"initialized": True}),
        ("/v1/sys/leader", {"ha_enabled": False, "is_self": False, "leader_address": "",
                            "performance_standby": False}),
    ],
)
async def test_status_endpoints_are_unauthenticated_and_read_only(
    client: Client, path: str, expected: dict[str, Any]
) -> None:
    resp = await client.get(path)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert {k: body[k] for k in expected} == expected
    for method in ("POST", "PUT", "DELETE"):
        refused = await client.request(method, path, json={"secret_shares": 1})
        assert refused.status == 405, (method, path)
        assert "errors" in await refused.json()


async def test_seal_status_names_the_cluster_and_version(client: Client) -> None:
    health = await (await client.get("/v1/sys/health")).json()
    seal = await (await client.get("/v1/sys/seal-status")).json()
    assert seal["cluster_id"] == health["cluster_id"] and seal["version"] == health["version"]
    # The API level, then authmount's version (Terraform gates jwks_pairs on Vault >= 1.16: row 63).
    assert health["version"] == f"2.7.2+authmount.{VERSION}"


# -- envelope and adapter ------------------------------------------------------------------
async def test_envelope_has_exact_keys(echo: Client) -> None:
    resp = await echo.post("/v1/auth/echo/echo", json={"a": 1}, headers=H)
    body = await resp.json()
    assert resp.headers["Content-Type"] == "application/json"
    assert set(body) == {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info",
                         "warnings", "auth", "mount_type"}
    assert body["mount_type"] == "echo"
    assert body["warnings"] == ["Endpoint ignored these unrecognized parameters: [a]"]
    assert body["data"]["data"] == {"a": 1}
    assert body["data"]["has_token"] is True
    assert "x-vault-token" not in body["data"]["headers"]


async def test_crud_roundtrip_and_204(echo: Client) -> None:
    assert (await echo.post("/v1/auth/echo/item/one", json={"value": "v1"}, headers=H)).status == 204
    resp = await echo.get("/v1/auth/echo/item/one", headers=H)
    assert (await resp.json())["data"] == {"value": "v1"}
    assert (await echo.put("/v1/auth/echo/item/one", json={"value": "v2"}, headers=H)).status == 204
    assert (await (await echo.get("/v1/auth/echo/item/one", headers=H)).json())["data"]["value"] == "v2"
    assert (await echo.delete("/v1/auth/echo/item/one", headers=H)).status == 204
    resp = await echo.get("/v1/auth/echo/item/one", headers=H)
    assert resp.status == 404
    assert await resp.json() == {"errors": []}


@pytest.mark.parametrize(
    ("query", "status"),
    [("?list=true", 200), ("?list=True", 200), ("?list=1", 200), ("?list=false", 405), ("", 405)],
    ids=["true", "True (hvac Client.list)", "1", "false is a read", "no list"],
)
async def test_get_list_query(echo: Client, query: str, status: int) -> None:
    await echo.post("/v1/auth/echo/item/a", json={"value": "x"}, headers=H)
    resp = await echo.get("/v1/auth/echo/item" + query, headers=H)
    assert resp.status == status
    if status == 200:
        assert (await resp.json())["data"]["keys"] == ["a"]


async def test_list_non_boolean_is_400(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/item?list=maybe", headers=H)
    assert resp.status == 400
    assert "list" in (await resp.json())["errors"][0]


async def test_empty_list_is_404_with_empty_errors(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/item?list=true", headers=H)
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": []}


@pytest.mark.parametrize(
    ("body", "ctype"),
    [(b"{bad json", "application/json"), (b"[1, 2]", "application/json"), (b'"str"', "application/json"),
     (b"{\"a\": 1", "application/x-www-form-urlencoded")],
    ids=["malformed", "array", "string", "form type but JSON-looking body"],
)
async def test_bad_json_is_400(echo: Client, body: bytes, ctype: str) -> None:
    resp = await echo.post("/v1/auth/echo/echo", data=body, headers={**H, "Content-Type": ctype})
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": ["error parsing JSON"]}


async def test_form_body(echo: Client) -> None:
    """A key given twice in a form is its values joined with a comma, as Vault's
    ``parseFormRequest`` joins them (a query string keeps a list, below)."""
    resp = await echo.post("/v1/auth/echo/echo", data="a=1&b=2&b=3",
                           headers={**H, "Content-Type": "application/x-www-form-urlencoded"})
    assert (await resp.json())["data"]["data"] == {"a": "1", "b": "2,3"}


async def test_query_args_become_data_on_get(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/echo?x=1&y=2&y=3", headers=H)
    assert (await resp.json())["data"]["data"] == {"x": "1", "y": ["2", "3"]}


async def test_empty_post_body_is_empty_data(echo: Client) -> None:
    resp = await echo.post("/v1/auth/echo/echo", headers=H)
    assert (await resp.json())["data"]["data"] == {}


async def test_body_too_large_is_413_json(aiohttp_client: AiohttpClient) -> None:
    client: Client = await aiohttp_client(make_test_server(create_app(make_settings(max_request_size=2048))))
    resp = await client.post("/v1/auth/token/lookup-self", data=b"{" + b" " * 5000 + b"}",
                             headers={**H, "Content-Type": "application/json"})
    assert resp.status == 413
    assert resp.headers["Content-Type"] == "application/json"
    assert (await resp.json())["errors"] == ["http: request body too large"]


async def test_every_reply_says_no_store(client: Client) -> None:
    """Vault's ``Cache-Control: no-store`` on every reply: a reply may hold a token, and no
    cache between client and server may keep it."""
    replies = [
        await client.post("/v1/auth/token/create", json={}, headers=H),  # a token: the one-step JSON reply
        await client.put("/v1/sys/policies/acl/cc", json={"policy": 'path "a" { capabilities = ["read"] }'}, headers=H),
        await client.head("/v1/sys/health"), await client.get("/v1/sys/auth"), await client.get("/nothing"),
        await client.post("/v1/auth/token/create", json={"ttl": "soon"}, headers=H),
    ]
    assert [r.status for r in replies] == [200, 204, 200, 403, 404, 400]
    assert all(r.headers.get("Cache-Control") == "no-store" for r in replies), [dict(r.headers) for r in replies]


async def test_unknown_mount_is_404_no_handler(client: Client) -> None:
    resp = await client.get("/v1/auth/nothing/here", headers=H)
    assert resp.status == 404
    assert (await resp.json())["errors"] == ['no handler for route "auth/nothing/here". route entry not found.']


@pytest.mark.parametrize("path", ["/v1/auth/nothing/here", "/v1/sys/nothing", "/v1/identity/nothing", "/v1/secret/foo"])
async def test_an_unknown_path_is_404_only_to_a_caller_allowed_it(client: Client, path: str) -> None:
    """Vault checks the token and the ACL before it routes: no token, a bad one or one whose
    policies do not cover the path get 403, so an anonymous caller cannot map what exists."""
    created = await client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=H)
    plain = {"X-Vault-Token": (await created.json())["auth"]["client_token"]}
    for headers, status in (({}, 403), ({"X-Vault-Token": "hvs.nope"}, 403), (plain, 403), (H, 404)):
        resp = await client.get(path, headers=headers)
        assert resp.status == status, (headers, await resp.text())
        expected = ["permission denied"] if status == 403 else [f'no handler for route "{path[4:]}". route entry not found.']
        assert (await resp.json())["errors"] == expected


async def test_unknown_v1_path_is_404(client: Client) -> None:
    resp = await client.get("/v1/secret/foo", headers=H)
    assert resp.status == 404
    assert "no handler for route" in (await resp.json())["errors"][0]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/v1"), ("POST", "/health"), ("DELETE", "/ui/x/y"), ("HEAD", "/nothing"),
     ("GET", "/v1/auth/x/r%0d%0ay"), ("GET", "/v1/sys/a%0ab"), ("GET", "/x%0a")],
    ids=["root", "v1 without slash", "post", "delete nested", "head", "crlf in a mount path",
         "newline in a sys path", "newline outside v1"],
)
async def test_path_outside_v1_is_json_404_and_logged(client: Client, method: str, path: str) -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        resp = await client.request(method, path)
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert await resp.json() == {"errors": []}
    lines = [e for e in logs if e["event"] == "request"]
    assert [(e["method"], e["status"], e["mount"]) for e in lines] == [(method, 404, None)]
    assert lines[0]["path"] == path.replace("%0d", "\r").replace("%0a", "\n")


async def test_unsupported_path_in_mount(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/nope", headers=H)
    assert resp.status == 404
    assert (await resp.json())["errors"] == ["unsupported path"]


async def test_unsupported_method_is_405(echo: Client) -> None:
    merge = {**H, "Content-Type": "application/merge-patch+json"}
    resp = await echo.patch("/v1/auth/echo/item/a", data=b"{}", headers=merge)
    assert resp.status == 405  # the path takes no PATCH
    resp = await echo.patch("/v1/auth/echo/item/a", json={}, headers=H)  # as OpenBao: the body's type first
    assert (resp.status, (await resp.json())["errors"]) == (
        415, ["PATCH requires Content-Type of application/merge-patch+json, provided application/json"])
    resp = await echo.request("TRACE", "/v1/auth/echo/item/a", headers=H)
    assert resp.status == 405


async def test_internal_error_is_generic_500(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/boom", headers=H)
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "application/json"
    body = await resp.text()
    assert body == '{"errors":["internal error"]}'


async def test_raw_body_response(echo: Client) -> None:
    resp = await echo.get("/v1/auth/echo/raw")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert await resp.text() == "<html>ok</html>"


async def test_plugin_error_becomes_400(echo: Client) -> None:
    resp = await echo.post("/v1/auth/echo/item/x", json={"value": "bad"}, headers=H)
    assert resp.status == 400
    assert await resp.json() == {"errors": ["value must not be bad"]}


# -- tokens, login, ACL --------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Vault-Token": "hvs.nope"}, {"Authorization": "Bearer hvs.nope"}, {"Authorization": "Basic x"}],
    ids=["no token", "unknown token", "unknown bearer", "not bearer"],
)
async def test_authenticated_path_needs_token(echo: Client, headers: dict[str, str]) -> None:
    resp = await echo.get("/v1/auth/echo/item/a", headers=headers)
    assert resp.status == 403
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"errors": ["permission denied"]}


async def test_bearer_token_accepted(echo: Client) -> None:
    resp = await echo.post("/v1/auth/echo/echo", json={}, headers={"Authorization": f"Bearer {ROOT}"})
    assert resp.status == 200


async def test_login_ignores_invalid_x_vault_token_and_issues_auth(echo: Client) -> None:
    resp = await echo.post("/v1/auth/echo/login", json={"policies": "p1"}, headers={"X-Vault-Token": "garbage"})
    body = await resp.json()
    assert resp.status == 200
    auth = body["auth"]
    assert auth["client_token"] and auth["accessor"]
    assert "p1" in auth["policies"] and "default" in auth["policies"]
    assert auth["lease_duration"] == 600
    assert body["mount_type"] == "echo"
    lookup = await echo.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": auth["client_token"]})
    data = (await lookup.json())["data"]
    assert data["path"].startswith("auth/echo/")
    assert data["display_name"].startswith("echo")


async def test_acl_denies_without_policy(echo: Client) -> None:
    token = await login(echo, "nothing")
    resp = await echo.get("/v1/auth/echo/item/a", headers={"X-Vault-Token": token})
    assert resp.status == 403


async def test_acl_grants_by_capability(echo: Client) -> None:
    policy = 'path "auth/echo/item/*" { capabilities = ["read", "create"] }\npath "auth/echo/item/" { capabilities = ["list"] }'
    assert (await echo.put("/v1/sys/policies/acl/reader", json={"policy": policy}, headers=H)).status == 204
    await echo.post("/v1/auth/echo/item/a", json={"value": "x"}, headers=H)
    token = {"X-Vault-Token": await login(echo, "reader")}
    assert (await echo.get("/v1/auth/echo/item/a", headers=token)).status == 200
    assert (await echo.get("/v1/auth/echo/item?list=true", headers=token)).status == 200
    assert (await echo.delete("/v1/auth/echo/item/a", headers=token)).status == 403
    # The item exists, so a write needs "update", which the policy lacks ...
    assert (await echo.post("/v1/auth/echo/item/a", json={"value": "y"}, headers=token)).status == 403
    # ... while a new item only needs "create" (decided by the path's existence check).
    assert (await echo.post("/v1/auth/echo/item/b", json={"value": "y"}, headers=token)).status == 204
    # No rule of the policy covers sys/auth.
    assert (await echo.get("/v1/sys/auth", headers=token)).status == 403


# -- remote address / X-Forwarded-For ------------------------------------------------------
@pytest.mark.parametrize(
    ("trusted", "skips", "xff", "expected"),
    [
        ((), 0, "1.2.3.4", "127.0.0.1"),
        (("127.0.0.0/8",), 0, "1.1.1.1, 2.2.2.2, 3.3.3.3", "3.3.3.3"),
        (("127.0.0.0/8",), 1, "1.1.1.1, 2.2.2.2, 3.3.3.3", "2.2.2.2"),
        (("10.0.0.0/8",), 0, "1.2.3.4", "127.0.0.1"),
        (("127.0.0.0/8",), 0, None, "127.0.0.1"),
    ],
    ids=["no trusted proxies: XFF ignored", "rightmost", "hop skip 1", "untrusted peer: ignored", "absent"],
)
async def test_remote_addr(
    aiohttp_client: AiohttpClient, trusted: tuple[str, ...], skips: int, xff: str | None, expected: str
) -> None:
    settings = make_settings(
        trusted_proxies=tuple(ipaddress.ip_network(c) for c in trusted), x_forwarded_for_hop_skips=skips
    )
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    await client.post("/v1/sys/auth/echo", json={"type": "echo"}, headers=H)
    headers = dict(H)
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    resp = await client.post("/v1/auth/echo/echo", json={}, headers=headers)
    assert (await resp.json())["data"]["remote"] == expected


async def test_xff_chain_shorter_than_hop_skips_is_400(aiohttp_client: AiohttpClient) -> None:
    settings = make_settings(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),), x_forwarded_for_hop_skips=2)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    resp = await client.get("/v1/sys/auth", headers={**H, "X-Forwarded-For": "1.1.1.1"})
    assert resp.status == 400
    assert "hops to skip" in (await resp.json())["errors"][0]


# -- sys/auth ------------------------------------------------------------------------------
async def test_sys_auth_list_copies_data_to_top(echo: Client) -> None:
    body = await (await echo.get("/v1/sys/auth", headers=H)).json()
    assert set(body["data"]) == {"echo/", "token/"}
    assert body["echo/"] == body["data"]["echo/"]
    entry = body["data"]["echo/"]
    assert entry["type"] == "echo"
    assert entry["accessor"].startswith("auth_echo_") and len(entry["accessor"]) == len("auth_echo_") + 8
    assert set(entry["config"]) >= {"default_lease_ttl", "max_lease_ttl", "force_no_cache", "token_type"}


async def test_openapi_lists_mount_paths(echo: Client) -> None:
    body = await (await echo.get("/v1/sys/internal/specs/openapi", headers=H)).json()
    assert "/auth/echo/login" in body["paths"]
    assert "/auth/echo/item/{name}" in body["paths"]
    assert "post" in body["paths"]["/sys/auth/{path}"]


async def test_response_metadata_is_in_the_envelope_only(echo: Client) -> None:
    """Issue 12 (``oauth2_metadata``): the login response carries the IdP's token; the stored
    token, its lookup and the token store's block do not."""
    secret = "idp-access-token-" + "y" * 40
    body = await (await echo.post("/v1/auth/echo/login", json={"secret": secret})).json()
    assert body["auth"]["metadata"] == {"who": "tester", "oauth2_access_token": secret}
    lookup = await (await echo.get("/v1/auth/token/lookup-self",
                                   headers={"X-Vault-Token": body["auth"]["client_token"]})).json()
    assert lookup["data"]["meta"] == {"who": "tester"}
    storage = app_of(echo)[STORAGE]
    assert isinstance(storage, InMemoryStorage)
    assert secret not in json.dumps(storage.dump(), default=str)


async def test_openapi_has_the_oidc_round_two_paths_and_fields(client: Client) -> None:
    """Issue 12: oidc/poll and every new config and role field are in the document."""
    assert (await client.post("/v1/sys/auth/sso", json={"type": "oidc"}, headers=H)).status == 204
    paths = (await (await client.get("/v1/sys/internal/specs/openapi", headers=H)).json())["paths"]

    def props(route: str) -> dict[str, Any]:
        schema = paths[route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return dict(schema["properties"])

    assert paths["/auth/sso/oidc/poll"]["x-vault-unauthenticated"] is True
    assert set(props("/auth/sso/oidc/poll")) == {"state", "client_nonce"}
    assert {"error", "error_uri", "confirmation"} <= set(props("/auth/sso/oidc/auth_url")) | set(
        paths["/auth/sso/oidc/callback"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"])
    config = props("/auth/sso/config")
    for name in ("oidc_client_private_key", "client_tls_key"):
        assert config[name].get("x-sensitive") is True, name
    assert {"oidc_client_assertion_alg", "oidc_client_assertion_kid", "client_tls_cert", "skip_jwks_validation"} <= set(
        config)
    role = props("/auth/sso/role/{name}")
    assert {"callback_mode", "poll_interval", "oidc_disable_confirmation", "oauth2_metadata",
            "oidc_claims_precedence", "resolve_distributed_claims"} <= set(role)
    assert role["poll_interval"]["type"] == "integer" and role["oauth2_metadata"]["type"] == "array"


async def test_policy_crud(client: Client) -> None:
    policy = 'path "auth/*" { capabilities = ["read"] }'
    assert (await client.put("/v1/sys/policy/dev", json={"policy": policy}, headers=H)).status == 204
    body = await (await client.get("/v1/sys/policy/dev", headers=H)).json()
    assert body["rules"] == policy and body["name"] == "dev"
    listing = await (await client.get("/v1/sys/policy", headers=H)).json()
    assert "dev" in listing["policies"] and "dev" in listing["data"]["keys"]
    acl = await (await client.request("LIST", "/v1/sys/policies/acl", headers=H)).json()
    assert "dev" in acl["data"]["keys"]
    assert (await (await client.get("/v1/sys/policies/acl/dev", headers=H)).json())["data"]["policy"] == policy
    bad = await client.put("/v1/sys/policies/acl/broken", json={"policy": "path {"}, headers=H)
    assert bad.status == 400
    assert (await client.delete("/v1/sys/policies/acl/dev", headers=H)).status == 204
    assert (await client.get("/v1/sys/policies/acl/dev", headers=H)).status == 404


async def test_mount_table_seen_by_app(echo: Client) -> None:
    table = app_of(echo)[MOUNTS]
    found = table.match("echo/item/x")
    assert found is not None and found[1] == "item/x"


class SudoBackend(Backend):
    """``admin/<name>`` needs sudo on top of the operation's capability; ``plain`` does not."""

    type_name = "sudoecho"

    def __init__(self) -> None:
        super().__init__()
        name = FieldSet({"name": Field(FieldType.NAME, "A name.")})
        self.paths = [
            PathSpec(r"admin/(?P<name>\w+)", name, {Operation.READ: self._ok, Operation.UPDATE: self._ok}, sudo=True),
            PathSpec("plain", FieldSet({}), {Operation.READ: self._ok}),
        ]

    async def _ok(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"ok": True})


registry.register("sudoecho", SudoBackend)


@pytest.mark.parametrize(
    ("capabilities", "read", "write"),
    [('["read", "update"]', 403, 403), ('["read", "sudo"]', 200, 403), ('["read", "update", "sudo"]', 200, 200),
     ('["create", "sudo"]', 403, 403)],
    ids=["no sudo", "sudo, read only", "sudo and update", "create is not enough (no existence check)"],
)
async def test_mount_path_declared_sudo(client: Client, capabilities: str, read: int, write: int) -> None:
    """``PathSpec.sudo`` (Vault's root paths) is honoured on mounts as on sys paths."""
    assert (await client.post("/v1/sys/auth/su", json={"type": "sudoecho"}, headers=H)).status == 204
    policy = f'path "auth/su/*" {{ capabilities = {capabilities} }}'
    assert (await client.put("/v1/sys/policies/acl/su", json={"policy": policy}, headers=H)).status == 204
    created = await (await client.post("/v1/auth/token/create", json={"policies": ["su"]}, headers=H)).json()
    token = {"X-Vault-Token": created["auth"]["client_token"]}
    assert (await client.get("/v1/auth/su/admin/x", headers=token)).status == read
    assert (await client.post("/v1/auth/su/admin/x", json={}, headers=token)).status == write
    assert (await client.get("/v1/auth/su/plain", headers=token)).status == (200 if "read" in capabilities else 403)


# -- graceful shutdown -----------------------------------------------------------------------
class SlowBackend(Backend):
    """``wait``: signals that it started, then takes a moment before answering."""

    started: asyncio.Event

    def __init__(self) -> None:
        super().__init__()
        self.paths = [PathSpec("wait", FieldSet({}), {Operation.READ: self._wait}, unauthenticated=True)]

    async def _wait(self, req: Request, values: dict[str, Any]) -> Response:
        SlowBackend.started.set()
        await asyncio.sleep(0.3)
        return Response(data={"finished": True})


registry.register("slow", SlowBackend)


async def test_shutdown_lets_in_flight_request_finish() -> None:
    SlowBackend.started = asyncio.Event()
    app = create_app(make_settings())
    runner = ListVerbAppRunner(app, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/sys/auth/slow", json={"type": "slow"}, headers=H) as resp:
            assert resp.status == 204

        async def call() -> tuple[int, Any]:
            async with session.get(f"{base}/v1/auth/slow/wait") as r:
                return r.status, await r.json()

        pending = asyncio.create_task(call())
        await SlowBackend.started.wait()
        await runner.cleanup()  # what SIGTERM does
        status, body = await pending
    assert status == 200 and body["data"] == {"finished": True}


async def test_num_uses_token_is_revoked_after_its_last_use(echo: Client) -> None:
    created = await echo.post("/v1/auth/token/create", json={"policies": ["root"], "num_uses": 2}, headers=H)
    assert created.status == 200, await created.text()
    token = {"X-Vault-Token": (await created.json())["auth"]["client_token"]}
    assert (await echo.post("/v1/auth/echo/echo", json={}, headers=token)).status == 200
    assert (await echo.post("/v1/auth/echo/echo", json={}, headers=token)).status == 200
    assert (await echo.post("/v1/auth/echo/echo", json={}, headers=token)).status == 403


async def test_token_rows_are_not_announced_to_other_nodes(aiohttp_client: AiohttpClient) -> None:
    """A shared engine is told which keys no node caches (token rows), so their writes need
    no cross-node invalidation; cached keys (mount epochs, mounts, policies) are not on it."""
    from plugin.storage import InMemoryStorage
    from server.tokens.store import EPOCH_PREFIX

    class Shared(InMemoryStorage):
        quiet: list[str] = []

        def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
            self.cb = cb

        def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
            self.quiet = list(prefixes)

    storage = Shared()
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    assert storage.quiet == ["sys/token/id/", "sys/token/accessor/", "sys/token/parent/"]
    assert not any(EPOCH_PREFIX.startswith(p) or p.startswith("sys/token/mount") for p in storage.quiet)


@pytest.mark.parametrize("log_raw", [False, True], ids=["hashed", "log_raw"])
async def test_response_metadata_is_hashed_in_the_audit_log(echo: Client, tmp_path: Path, log_raw: bool) -> None:
    """Issue 12 (``oauth2_metadata``): the audit log's response entry shows the IdP's token
    hashed with the device's salt (sys/audit-hash finds it), hashed even with ``log_raw``."""
    log = tmp_path / "audit.log"
    resp = await echo.post("/v1/sys/audit/file", headers=H,
                           json={"type": "file", "options": {"file_path": str(log), "log_raw": str(log_raw).lower()}})
    assert resp.status == 204, await resp.text()
    secret = "idp-access-token-" + "z" * 40
    body = await (await echo.post("/v1/auth/echo/login", json={"secret": secret})).json()
    assert body["auth"]["metadata"]["oauth2_access_token"] == secret  # the caller gets it
    if not log_raw:  # (with log_raw the request entry shows this test's request data, the secret too)
        assert secret not in log.read_text()
    hashed = (await (await echo.post("/v1/sys/audit-hash/file", json={"input": secret}, headers=H)).json())["data"]
    [entry] = [e for e in map(json.loads, log.read_text().splitlines())
               if e["type"] == "response" and e["request"]["path"] == "auth/echo/login"]
    meta = entry["response"]["auth"]["metadata"]
    assert meta["who"] == "tester" and meta["oauth2_access_token"].startswith("hmac-sha256:")
    if not log_raw:  # (sys/audit-hash of a log_raw device answers its input)
        assert meta["oauth2_access_token"] == hashed["hash"]
    assert secret not in json.dumps(entry["response"])
    token = body["auth"]["client_token"]
    assert (entry["response"]["auth"]["client_token"] == token) is log_raw  # log_raw shows the server's own token


async def test_a_refusal_answered_with_a_page_is_audited_and_counted(echo: Client, tmp_path: Path) -> None:
    """``Response.refused`` (the OIDC callback's error pages): the audit log's response entry
    has ``login_failure`` with the reason code, and authmount_logins_total counts it."""
    log = tmp_path / "audit.log"
    resp = await echo.post("/v1/sys/audit/file", headers=H, json={"type": "file", "options": {"file_path": str(log)}})
    assert resp.status == 204
    labels = {"mount": "auth/echo/", "role": "tester", "outcome": "bound_claims"}
    before = telemetry.REGISTRY.get_sample_value("authmount_logins_total", labels) or 0.0
    resp = await echo.post("/v1/auth/echo/refuse", json={})
    assert resp.status == 400 and await resp.text() == "<html>no</html>"
    assert (telemetry.REGISTRY.get_sample_value("authmount_logins_total", labels) or 0.0) - before == 1
    [entry] = [e for e in map(json.loads, log.read_text().splitlines())
               if e["type"] == "response" and e["request"]["path"] == "auth/echo/refuse"]
    failure = entry["response"]["login_failure"]
    assert (failure["reason"], failure["role"]) == ("bound_claims", "tester")
    assert failure["sub"].startswith("hmac-sha256:") and failure["iss"].startswith("hmac-sha256:")


async def test_response_metadata_of_a_wrapped_login_is_sealed(echo: Client) -> None:
    """Issue 12 (``oauth2_metadata``): a wrapped login keeps the IdP's token only sealed (the
    wrapped response), and unwrapping hands it over once."""
    secret = "idp-access-token-" + "w" * 40
    resp = await echo.post("/v1/auth/echo/login", json={"secret": secret}, headers={"X-Vault-Wrap-TTL": "300"})
    assert resp.status == 200, await resp.text()
    info = (await resp.json())["wrap_info"]
    storage = app_of(echo)[STORAGE]
    assert isinstance(storage, InMemoryStorage)
    assert secret not in json.dumps(storage.dump(), default=str)
    unwrapped = await echo.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
    assert (await unwrapped.json())["auth"]["metadata"]["oauth2_access_token"] == secret
