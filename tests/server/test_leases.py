"""``sys/leases/*`` over tokens' leases, on a server with a real SQLite file: revocation by
creation path (whole segments, children included, batch tokens left), the lease listing,
lookup and revocation of one lease, and who may do which. What OpenBao answers to the same
calls is checked side by side in tests/e2e/test_openbao_differential.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.appkeys import TOKENS
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.tokens.ids import SELECTOR_LEN
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-lease-tests"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    settings = Settings(storage=StorageSettings(type="sqlite", path=str(tmp_path / "authmount.db")), dev=True,
                        dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


async def _call(client: Client, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    resp = await client.request(method, f"/v1/{path}", json=body, headers={"X-Vault-Token": token})
    text = await resp.text()
    return resp.status, (await resp.json() if text else None)


async def _token(client: Client, by: str, body: dict[str, Any], path: str = "auth/token/create") -> str:
    status, answer = await _call(client, by, "POST", path, body)
    assert status == 200, answer
    return str(answer["auth"]["client_token"])


async def _alive(client: Client, token: str) -> bool:
    status, _ = await _call(client, token, "GET", "auth/token/lookup-self")
    assert status in (200, 403)
    return status == 200


async def _family(client: Client) -> tuple[str, dict[str, str]]:
    """The admin (the root token, made at auth/token/root: outside every prefix revoked
    here) and tokens made through each path."""
    admin = ROOT
    status, _ = await _call(client, admin, "POST", "auth/token/roles/r1", {"allowed_policies": ["default"], "path_suffix": "sfx"})
    assert status == 204
    made = {"create": await _token(client, admin, {"ttl": "1h"})}
    made["root policy, no ttl"] = await _token(client, admin, {"policies": ["root"]})
    made["create-orphan"] = await _token(client, admin, {"ttl": "1h"}, "auth/token/create-orphan")
    made["child of create-orphan"] = await _token(client, made["create-orphan"], {"ttl": "30m"})
    made["orphan made by create"] = await _token(client, made["create"], {"ttl": "30m"}, "auth/token/create-orphan")
    made["role"] = await _token(client, admin, {}, "auth/token/create/r1")
    made["batch"] = await _token(client, admin, {"type": "batch", "ttl": "1h", "policies": ["default"]})
    return admin, made


UNDER_CREATE = {"create", "root policy, no ttl", "child of create-orphan", "role"}


@pytest.mark.parametrize(
    ("path", "body", "revoked"),
    [
        ("sys/leases/revoke-prefix/auth/tok", {}, set()),  # whole segments only
        ("sys/leases/revoke-prefix/auth/token/create", {}, UNDER_CREATE),
        ("sys/leases/revoke-prefix/auth/token/create/r1", {}, {"role"}),
        ("sys/leases/revoke-prefix/auth/token/create/r1/sfx", {}, {"role"}),
        ("sys/leases/revoke-prefix/auth/token/create-orphan", {}, {"create-orphan", "child of create-orphan",
                                                                   "orphan made by create"}),
        ("sys/leases/revoke-force/auth/token/create", {}, UNDER_CREATE),
        ("sys/leases/revoke-prefix/auth/nope", {}, set()),
        ("sys/leases/revoke-prefix/sys", {}, set()),
    ],
)
async def test_revoke_prefix_takes_whole_segments_and_children(
    client: Client, path: str, body: dict[str, Any], revoked: set[str]
) -> None:
    """Every token made under the prefix goes with its children (``child of create-orphan``
    was made through auth/token/create by a token made through create-orphan: revoked by
    either prefix); orphans of a revoked token stay; batch tokens have no lease and stay."""
    admin, made = await _family(client)
    assert await _call(client, admin, "PUT", path, body) == (204, None)
    alive = {name for name, token in made.items() if await _alive(client, token)}
    assert alive == set(made) - revoked
    assert await _alive(client, admin)


async def test_revoke_prefix_without_sync_answers_202_and_revokes(client: Client) -> None:
    admin, made = await _family(client)
    resp = await client.put("/v1/sys/leases/revoke-prefix/auth/token/create", json={"sync": False},
                            headers={"X-Vault-Token": admin})
    assert resp.status == 202 and await resp.read() == b"" and resp.headers["Content-Type"] == "application/json"
    for _ in range(200):  # the background revocation: done within 2 s on a loaded machine
        if not await _alive(client, made["create"]):
            break
        await asyncio.sleep(0.01)
    alive = {name for name, token in made.items() if await _alive(client, token)}
    assert alive == set(made) - UNDER_CREATE


async def test_leases_are_listed_looked_up_and_revoked_one_by_one(client: Client) -> None:
    admin, made = await _family(client)
    assert await _call(client, admin, "LIST", "sys/leases/lookup") == (200, _keys(["auth/"]))
    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/")
    assert (status, answer["data"]["keys"]) == (200, ["create-orphan/", "create/", "root/"])
    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create")
    ids = [k for k in answer["data"]["keys"] if not k.endswith("/")]
    assert "r1/" in answer["data"]["keys"] and len(ids) == 3  # create, root policy, child of create-orphan
    # A lease id is the path and the row id: the token's selector (its accessor shows it too),
    # never the token's secret part.
    for name in UNDER_CREATE - {"role"}:
        token = made[name]
        selector, secret = token[4:4 + SELECTOR_LEN], token[4 + SELECTOR_LEN:]
        assert selector in ids and len(secret) >= 20 and not any(secret in i for i in answer["data"]["keys"])
    assert await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create/r1/") == (200, _keys(["sfx/"]))
    for empty in ("auth/nope/", "auth/tok", "auth/token/create/r1/sfx/x/"):
        assert await _call(client, admin, "LIST", f"sys/leases/lookup/{empty}") == (404, {"errors": []})

    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create/r1/sfx/")
    (role_id,) = answer["data"]["keys"]
    lease = f"auth/token/create/r1/sfx/{role_id}"
    status, answer = await _call(client, admin, "PUT", "sys/leases/lookup", {"lease_id": lease})
    assert status == 200
    data = answer["data"]
    assert data["id"] == lease and data["path"] == "auth/token/create/r1/sfx" and data["renewable"] is True
    assert data["last_renewal"] is None and 0 < data["ttl"] <= 32 * 24 * 3600
    assert data["issue_time"].endswith("Z") and data["expire_time"].endswith("Z")
    assert await _call(client, admin, "PUT", f"sys/leases/revoke/{lease}", {}) == (204, None)
    assert not await _alive(client, made["role"])
    assert await _call(client, admin, "PUT", "sys/leases/lookup", {"lease_id": lease}) == (400, {"errors": ["invalid lease"]})

    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create-orphan/")
    assert len(answer["data"]["keys"]) == 2  # create-orphan, orphan made by create
    for orphan_id in answer["data"]["keys"]:
        body = {"lease_id": f"auth/token/create-orphan/{orphan_id}", "sync": False}
        resp = await client.put("/v1/sys/leases/revoke", json=body, headers={"X-Vault-Token": admin})
        assert resp.status == 202
    for name in ("create-orphan", "child of create-orphan", "orphan made by create"):
        assert not await _alive(client, made[name])
    assert await _alive(client, made["create"])


@pytest.mark.parametrize(
    ("method", "path", "body", "answer"),
    [
        ("PUT", "sys/leases/lookup", {}, (400, {"errors": ["lease_id must be specified"]})),
        ("PUT", "sys/leases/lookup", {"lease_id": "auth/token/create/nope"}, (400, {"errors": ["invalid lease"]})),
        ("PUT", "sys/leases/lookup", {"lease_id": "nope"}, (400, {"errors": ["invalid lease"]})),
        ("PUT", "sys/leases/revoke", {}, (400, {"errors": ["lease_id must be specified"]})),
        # an unknown lease is revoked already, as Vault answers it
        ("PUT", "sys/leases/revoke", {"lease_id": "auth/token/create/nope"}, (204, None)),
        ("PUT", "sys/leases/revoke/auth/token/create/nope", {}, (204, None)),
        ("PUT", "sys/leases/renew", {}, (400, {"errors": ["lease_id must be specified"]})),
        ("PUT", "sys/leases/renew", {"lease_id": "auth/token/create/nope"}, (400, {"errors": ["lease not found"]})),
        # hvac's sys.renew_lease sends "increment": null when given none: not given, as OpenBao reads it
        ("PUT", "sys/leases/renew", {"lease_id": "auth/token/create/nope", "increment": None},
         (400, {"errors": ["lease not found"]})),
        ("PUT", "sys/leases/renew", {"lease_id": "auth/token/create/nope", "increment": "soon"},
         (400, {"errors": ['Field validation failed: error converting input soon for field "increment": '
                           'time: invalid duration "soon"']})),
        ("PUT", "sys/leases/renew/auth/token/create/nope", {}, (400, {"errors": ["lease not found"]})),
        # a row id that is no selector or HMAC names nothing: never part of a storage key (a NUL
        # was a 500 from SQLite's key check)
        ("PUT", "sys/leases/lookup", {"lease_id": "auth/x/\u0000"}, (400, {"errors": ["invalid lease"]})),
        ("PUT", "sys/leases/revoke", {"lease_id": "auth/x/a\u0000b"}, (204, None)),
        ("PUT", "sys/leases/renew", {"lease_id": "auth/x/%2e"}, (400, {"errors": ["lease not found"]})),
        ("PUT", "sys/leases/lookup", {"lease_id": "auth/x/" + "a" * 129}, (400, {"errors": ["invalid lease"]})),
        ("GET", "sys/leases/lookup", None, (405, {"errors": ["unsupported operation"]})),
        ("GET", "sys/leases/revoke-prefix/auth/token", None, (405, {"errors": ["unsupported operation"]})),
        ("DELETE", "sys/leases/revoke-prefix/auth/token", None, (405, {"errors": ["unsupported operation"]})),
    ],
)
async def test_lease_refusals(client: Client, method: str, path: str, body: Any, answer: tuple[int, Any]) -> None:
    assert await _call(client, ROOT, method, path, body) == answer


async def test_a_lease_id_names_its_path(client: Client) -> None:
    """The row id alone does not do: a lease id with another path is no lease (and revoking
    it revokes nothing)."""
    admin, made = await _family(client)
    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create/r1/sfx/")
    (role_id,) = answer["data"]["keys"]
    for wrong in (f"auth/token/create/{role_id}", f"auth/jwt/login/{role_id}", role_id, f"/{role_id}"):
        assert await _call(client, admin, "PUT", "sys/leases/lookup", {"lease_id": wrong}) == (400, {"errors": ["invalid lease"]})
        assert await _call(client, admin, "PUT", "sys/leases/revoke", {"lease_id": wrong}) == (204, None)
    assert await _alive(client, made["role"])


async def test_prefix_revocation_and_listing_need_sudo(client: Client) -> None:
    """As Vault's root paths: revoke-prefix, revoke-force and the listing need sudo; lookup and
    revocation of one lease need only update."""
    plain = 'path "sys/leases/*" { capabilities = ["update", "list"] }'
    sudo = 'path "sys/leases/*" { capabilities = ["update", "list", "sudo"] }'
    for name, text in (("leases", plain), ("leases-sudo", sudo)):
        assert (await _call(client, ROOT, "PUT", f"sys/policies/acl/{name}", {"policy": text}))[0] == 204
    without = await _token(client, ROOT, {"policies": ["leases"]})
    with_sudo = await _token(client, ROOT, {"policies": ["leases-sudo"]})
    for method, path in (("PUT", "sys/leases/revoke-prefix/auth/nope"), ("PUT", "sys/leases/revoke-force/auth/nope"),
                         ("LIST", "sys/leases/lookup/auth/token/")):
        assert await _call(client, without, method, path, {}) == (403, {"errors": ["permission denied"]})
        assert (await _call(client, with_sudo, method, path, {}))[0] in (200, 204)
    assert (await _call(client, without, "PUT", "sys/leases/lookup", {"lease_id": "auth/x/y"}))[0] == 400
    assert await _call(client, without, "PUT", "sys/leases/revoke", {"lease_id": "auth/x/y"}) == (204, None)
    nobody = await _token(client, ROOT, {"policies": ["default"]})
    assert await _call(client, nobody, "PUT", "sys/leases/revoke", {"lease_id": "auth/x/y"}) == (403, {"errors": ["permission denied"]})


async def test_expired_tokens_are_not_listed(client: Client) -> None:
    admin = ROOT
    await _token(client, admin, {"ttl": "1s"})
    status, answer = await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create/")
    assert status == 200 and len(answer["data"]["keys"]) == 1
    await asyncio.sleep(1.1)
    assert await _call(client, admin, "LIST", "sys/leases/lookup/auth/token/create/") == (404, {"errors": []})


def _keys(keys: list[str]) -> Any:
    return _Envelope(keys)


class _Envelope:
    """Equal to a LIST answer with exactly these keys (the envelope's request id differs)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and (other.get("data") or {}).get("keys") == self.keys

    def __repr__(self) -> str:
        return f"<keys {self.keys}>"


async def test_a_token_lease_is_not_renewed_through_sys_leases(client: Client) -> None:
    """As Vault: tokens are renewed through auth/token/renew*, and sys/leases/renew says so."""
    renewable = await _token(client, ROOT, {"ttl": "1h"})
    await _token(client, ROOT, {"ttl": "1h", "renewable": False})
    status, answer = await _call(client, ROOT, "LIST", "sys/leases/lookup/auth/token/create/")
    seen = []
    for lease_id in answer["data"]["keys"]:
        status, out = await _call(client, ROOT, "PUT", "sys/leases/renew", {"lease_id": f"auth/token/create/{lease_id}",
                                                                              "increment": "1h"})
        seen.append((status, out["errors"][0]))
    assert sorted(seen) == [(400, "lease is not renewable"), (400, "tokens cannot be renewed through this endpoint")]
    status, out = await _call(client, ROOT, "LIST", "sys/leases/lookup/auth/token/root/")
    assert await _call(client, ROOT, "PUT", f"sys/leases/renew/auth/token/root/{out['data']['keys'][0]}", {}) == (
        400, {"errors": ["lease is not renewable"]})  # the root token never expires
    assert await _alive(client, renewable)


async def test_sys_leases_tidy_is_the_token_stores_tidy(client: Client) -> None:
    """``vault lease tidy``: the only leases are tokens', so it removes the expired token rows,
    started in the background as ``auth/token/tidy`` is (202 and Vault's warning)."""
    tokens = app_of(client)[TOKENS]
    await _token(client, ROOT, {"ttl": "1s"})
    await asyncio.sleep(1.1)
    before = len(await tokens.storage.list("sys/token/id/"))
    status, answer = await _call(client, ROOT, "POST", "sys/leases/tidy")
    assert status == 202 and answer["warnings"] == [
        "Tidy operation successfully started. Any information from the operation will be printed to Vault's server "
        "logs."]
    for _ in range(100):
        if len(await tokens.storage.list("sys/token/id/")) < before:
            break
        await asyncio.sleep(0.02)
    assert len(await tokens.storage.list("sys/token/id/")) == before - 1  # the expired one, not the root token
    user = await _token(client, ROOT, {"policies": ["default"]})
    assert await _call(client, user, "POST", "sys/leases/tidy") == (403, {"errors": ["permission denied"]})
