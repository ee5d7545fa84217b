"""sys/capabilities-self, sys/capabilities and sys/capabilities-accessor: the token's ACL on
given paths, answered in Vault's shape (per-path keys, ``capabilities`` for one path)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client

ROOT = "root-token-for-capability-tests"
H = {"X-Vault-Token": ROOT}

POLICY = """
path "auth/ci/things/*" { capabilities = ["read", "list"] }
path "auth/ci/things/secret" { capabilities = ["deny"] }
path "auth/ci/admin" { capabilities = ["create", "update", "sudo"] }
"""


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


async def _token(client: Client, policies: str) -> str:
    """A token with ``policies`` (the reader policy written first)."""
    resp = await client.put("/v1/sys/policies/acl/reader", json={"policy": POLICY}, headers=H)
    assert resp.status == 204
    created = await client.post("/v1/auth/token/create", json={"policies": [policies]}, headers=H)
    assert created.status == 200, await created.text()
    return str((await created.json())["auth"]["client_token"])


async def _ask(client: Client, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers={"X-Vault-Token": token})
    assert resp.headers["Content-Type"] == "application/json"
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["auth/ci/things/a"], {"auth/ci/things/a": ["list", "read"], "capabilities": ["list", "read"]}),
        ([" /auth/ci/things/secret "], {"/auth/ci/things/secret": ["deny"], "capabilities": ["deny"]}),
        (["auth/ci/admin", "sys/auth"], {"auth/ci/admin": ["create", "sudo", "update"], "sys/auth": ["deny"]}),
        ("auth/ci/admin,auth/token/lookup-self",
         {"auth/ci/admin": ["create", "sudo", "update"], "auth/token/lookup-self": ["read"]}),
        (["sys/capabilities-self", "sys/capabilities-self"],  # duplicates once; the default policy
         {"sys/capabilities-self": ["update"], "capabilities": ["update"]}),
        # keyed as asked (Vault keeps a leading "/" in the key), judged without the "/"
        (["/auth/ci/things/a", "auth/ci/things/a", "//auth/ci/things/a"],
         {"/auth/ci/things/a": ["list", "read"], "auth/ci/things/a": ["list", "read"],
          "//auth/ci/things/a": ["list", "read"]}),
    ],
    ids=["glob", "deny wins", "two paths", "comma string", "default policy", "keys as asked"],
)
async def test_capabilities_self(client: Client, paths: Any, expected: dict[str, Any]) -> None:
    token = await _token(client, "reader")
    status, body = await _ask(client, "/v1/sys/capabilities-self", token, {"paths": paths})
    assert status == 200
    assert {k: body["data"][k] for k in body["data"]} == expected
    assert {k: body[k] for k in expected} == expected  # copied to the top level, as Vault does


async def test_deprecated_single_path_and_root(client: Client) -> None:
    status, body = await _ask(client, "/v1/sys/capabilities-self", ROOT, {"path": "anything/at/all"})
    assert status == 200 and body["capabilities"] == ["root"] and body["anything/at/all"] == ["root"]


async def test_a_token_on_its_last_use_is_invalid_here(client: Client) -> None:
    """OpenBao 2.7.2: a one-use token asking for its own capabilities is pending revocation
    by then, and is answered ``400 invalid token``; with a use left it is answered."""
    for uses, expected in ((1, (400, {"errors": ["invalid token"]})), (2, (200, ["deny"]))):
        created = await client.post("/v1/auth/token/create", json={"num_uses": uses, "policies": ["default"]}, headers=H)
        token = (await created.json())["auth"]["client_token"]
        status, body = await _ask(client, "/v1/sys/capabilities-self", token, {"paths": ["sys/auth"]})
        assert (status, body if status != 200 else body["capabilities"]) == expected


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "paths must be supplied"),
        ({"paths": []}, 400, "paths must be supplied"),
        ({"paths": ""}, 400, "paths must be supplied"),
        ({"path": ""}, 400, "paths must be supplied"),
        ({"paths": " , "}, 400, "missing path"),  # Vault's answer for an empty path among the asked
        ({"paths": ["a", "\t"]}, 400, "missing path"),
        ({"paths": [1]}, 400, "paths must be a list of strings or a comma-separated string"),
        ({"paths": {"a": 1}}, 400, "paths must be a list of strings or a comma-separated string"),
        ({"paths": [f"p/{i}" for i in range(257)]}, 400, "too many paths: 257 (at most 256)"),
    ],
)
async def test_bad_paths(client: Client, body: dict[str, Any], status: int, message: str) -> None:
    token = await _token(client, "reader")
    got, reply = await _ask(client, "/v1/sys/capabilities-self", token, body)
    assert (got, reply["errors"]) == (status, [message])


@pytest.mark.parametrize("path", ["/v1/sys/capabilities-self", "/v1/sys/capabilities", "/v1/sys/capabilities-accessor"])
async def test_reads_are_refused_and_no_token_is_denied(client: Client, path: str) -> None:
    assert (await client.get(path, headers=H)).status == 405
    resp = await client.post(path, json={"paths": ["a"]})
    assert resp.status == 403  # authentication comes before the body's validation
    resp = await client.post(path, json={}, headers={"X-Vault-Token": "hvs.unknown"})
    assert resp.status == 403


async def test_other_token_and_accessor_need_their_own_grant(client: Client) -> None:
    token = await _token(client, "reader")
    lookup = await (await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})).json()
    accessor = lookup["data"]["accessor"]
    # The default policy does not grant sys/capabilities or sys/capabilities-accessor.
    for path, body in (("/v1/sys/capabilities", {"token": token}), ("/v1/sys/capabilities-accessor", {"accessor": accessor})):
        status, _ = await _ask(client, path, token, {**body, "paths": ["auth/ci/things/x"]})
        assert status == 403
        status, reply = await _ask(client, path, ROOT, {**body, "paths": ["auth/ci/things/x"]})
        assert status == 200 and reply["capabilities"] == ["list", "read"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/sys/capabilities", {}, "missing token"),
        ("/v1/sys/capabilities", {"token": "hvs.nosuchtoken"}, "invalid token"),
        ("/v1/sys/capabilities-accessor", {}, "missing accessor"),
        ("/v1/sys/capabilities-accessor", {"accessor": "nosuch"}, "invalid accessor"),
    ],
)
async def test_unknown_targets(client: Client, path: str, body: dict[str, Any], message: str) -> None:
    status, reply = await _ask(client, path, ROOT, {**body, "paths": ["a"]})
    assert (status, reply["errors"]) == (400, [message])


SPELLING_POLICY = """
path "auth/jwt/role/*" { capabilities = ["read", "update"] }
path "auth/jwt/role/admin" { capabilities = ["deny"] }
path "sys/auth/*" { capabilities = ["read", "sudo"] }
path "sys/auth/jwt" { capabilities = ["deny"] }
path "sys/auth/jwt/tune" { capabilities = ["deny"] }
path "sys/policies/acl/*" { capabilities = ["read", "sudo"] }
path "sys/policies/acl/admin" { capabilities = ["deny"] }
path "sys/internal/specs/openapi" { capabilities = ["read"] }
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("auth/jwt/role/admin", ["deny"]),
        ("auth/jwt/role/ADMIN", ["deny"]),  # judged as auth/jwt/role/admin, as a request would be
        ("auth/jwt/role/ci", ["read", "update"]),
        ("auth/jwt/role/bad name", ["read", "update"]),  # no such path: the path as asked
        ("sys/auth/jwt/", ["deny"]),
        ("sys/auth//jwt", ["deny"]),
        ("sys/auth/jwt//tune", ["deny"]),
        ("sys/auth/other/", ["read", "sudo"]),
        ("sys/auth/%20jwt", ["read", "sudo"]),  # no canonical spelling (400 on request): as asked
        ("sys/policies/acl/ADMIN", ["deny"]),
        ("sys/policies/acl/Team", ["read", "sudo"]),
        ("sys/openapi", ["read"]),  # judged as sys/internal/specs/openapi
    ],
)
async def test_capabilities_answer_for_the_canonical_path(client: Client, path: str, expected: list[str]) -> None:
    """``vault token capabilities auth/jwt/role/ADMIN`` reports what a request to that path is
    really allowed: the path is made canonical first, as the request's would be."""
    assert (await client.post("/v1/sys/auth/jwt", json={"type": "jwt"}, headers=H)).status == 204
    resp = await client.put("/v1/sys/policies/acl/spelling", json={"policy": SPELLING_POLICY}, headers=H)
    assert resp.status == 204
    created = await client.post("/v1/auth/token/create", json={"policies": ["spelling"]}, headers=H)
    token = str((await created.json())["auth"]["client_token"])
    asked = path.replace("%20", " ")
    status, body = await _ask(client, "/v1/sys/capabilities-self", token, {"paths": [asked]})
    assert status == 200
    assert body["data"] == {asked: expected, "capabilities": expected}  # keyed by the path as asked
    status, body = await _ask(client, "/v1/sys/capabilities", ROOT, {"token": token, "paths": [asked]})
    assert status == 200 and body[asked] == expected
    # The answer matches what a request to the path gets.
    if path.startswith("auth/jwt/role/") and " " not in path:
        got = await client.get(f"/v1/{path}", headers={"X-Vault-Token": token})
        assert (got.status == 403) is (expected == ["deny"])
