"""``sys/remount``: moving an auth mount to another path, on servers with a real SQLite file.
The mount keeps its accessor, config and roles; the service tokens it issued at the old path
are revoked with their children (batch tokens stay, as in Vault); a mount enabled at the old
path since keeps its own; a login still running at the old path is caught by the second
sweep; a revocation a stop cut short is finished at the next start. What OpenBao answers to
the same calls is compared in tests/e2e/test_openbao_differential.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.framework import Alias, Auth
from server.app import create_app
from server.appkeys import MOUNTS, STORAGE, TOKENS
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.sys import remount
from server.tokens.entry import MountInfo
from server.tokens.store import TokenStore
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-remount-tests"
KEY = rsa_key(kid="mv")


def _settings(db: Path) -> Settings:
    return Settings(storage=StorageSettings(type="sqlite", path=str(db)), dev=True, dev_root_token_id=ROOT)


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remount, "SETTLE_SECONDS", 0.2)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    return await aiohttp_client(make_test_server(create_app(_settings(tmp_path / "authmount.db"))))


async def _call(client: Client, method: str, path: str, body: Any = None, token: str | None = ROOT) -> tuple[int, Any]:
    headers = {"X-Vault-Token": token} if token else {}
    resp = await client.request(method, f"/v1/{path}", json=body, headers=headers)
    text = await resp.text()
    return resp.status, (await resp.json() if text else None)


async def _ok(client: Client, method: str, path: str, body: Any = None) -> Any:
    status, out = await _call(client, method, path, body)
    assert status in (200, 204), (path, status, out)
    return out


async def _mount(client: Client, path: str) -> str:
    await _ok(client, "POST", f"sys/auth/{path}", {"type": "jwt", "description": "ci logins"})
    await _ok(client, "POST", f"auth/{path}/config", {"jwt_validation_pubkeys": [KEY.pem]})
    await _ok(client, "POST", "sys/policies/acl/dev", {"policy": 'path "auth/token/create" { capabilities = ["update"] }'})
    for role, extra in (("dev", {}), ("batch", {"token_type": "batch"})):
        await _ok(client, "POST", f"auth/{path}/role/{role}", {
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "token_policies": "dev", **extra})
    return str((await _ok(client, "GET", "sys/auth"))["data"][f"{path}/"]["accessor"])


async def _login(client: Client, mount: str, role: str = "dev") -> str:
    now = int(time.time())
    jwt = make_token({"sub": "ci", "aud": "authmount", "iat": now, "exp": now + 300}, key=KEY)
    status, out = await _call(client, "POST", f"auth/{mount}/login", {"role": role, "jwt": jwt}, token=None)
    assert status == 200, out
    return str(out["auth"]["client_token"])


async def _alive(client: Client, token: str) -> bool:
    status, _ = await _call(client, "GET", "auth/token/lookup-self", token=token)
    assert status in (200, 403)
    return status == 200


async def _move(client: Client, src: str, dst: str) -> str:
    status, out = await _call(client, "POST", "sys/remount", {"from": src, "to": dst})
    assert status == 200, out
    assert out["migration_id"] == out["data"]["migration_id"]  # Vault copies it to the top too
    return str(out["data"]["migration_id"])


async def _settled(client: Client, accessor: str) -> None:
    """Wait until the move's second sweep is done (the move leaves the mount entry)."""
    mounts = app_of(client)[MOUNTS]
    for _ in range(500):
        if not any(m.entry.moves for m in mounts.mounts.values() if m.entry.accessor == accessor):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the move's second sweep did not finish within 5 s")


async def test_a_moved_mount_keeps_its_config_and_roles_and_its_old_tokens_are_revoked(client: Client) -> None:
    accessor = await _mount(client, "jwt")
    before = (await _ok(client, "GET", "sys/auth"))["data"]["jwt/"]
    service, batch = await _login(client, "jwt"), await _login(client, "jwt", "batch")
    status, child = await _call(client, "POST", "auth/token/create", {"policies": ["default"]}, token=service)
    assert status == 200
    child_token = child["auth"]["client_token"]
    other = await _token_of_another_path(client)

    migration_id = await _move(client, "auth/jwt", "auth/ci")

    status, out = await _call(client, "GET", f"sys/remount/status/{migration_id}")
    assert (status, out["data"]) == (200, {"migration_id": migration_id, "migration_info": {
        "source_mount": "auth/jwt/", "target_mount": "auth/ci/", "status": "success"}})
    mounts = (await _ok(client, "GET", "sys/auth"))["data"]
    assert "jwt/" not in mounts and mounts["ci/"] == before  # accessor, uuid, description, tuning
    assert (await _ok(client, "GET", "auth/ci/role/dev"))["data"]["token_policies"] == ["dev"]
    status, _ = await _call(client, "POST", "auth/jwt/login", {"role": "dev", "jwt": "x"}, token=None)
    assert status in (403, 404)
    assert not await _alive(client, service) and not await _alive(client, child_token)
    assert await _alive(client, batch)  # no lease, as in Vault
    assert await _alive(client, other)
    new = await _login(client, "ci")
    status, out = await _call(client, "GET", "auth/token/lookup-self", token=new)
    assert (out["data"]["path"], out["data"]["meta"]["role"]) == ("auth/ci/login", "dev")
    await _settled(client, accessor)
    assert await _alive(client, new)


async def _token_of_another_path(client: Client) -> str:
    out = await _ok(client, "POST", "auth/token/create", {"policies": ["default"], "ttl": "1h"})
    return str(out["auth"]["client_token"])


async def test_a_mount_enabled_at_the_old_path_keeps_its_tokens(client: Client) -> None:
    accessor = await _mount(client, "jwt")
    await _move(client, "auth/jwt", "auth/ci")
    await _mount(client, "jwt")  # before the second sweep, at the same path
    token = await _login(client, "jwt")
    await _settled(client, accessor)
    assert await _alive(client, token)


async def test_a_login_still_running_at_the_old_path_is_revoked_by_the_second_sweep(client: Client) -> None:
    accessor = await _mount(client, "jwt")
    await _move(client, "auth/jwt", "auth/ci")
    # A token the old path issued after the first sweep: a login that was still running there
    # (or on a node whose copy of the mount table had not changed yet).
    tokens: TokenStore = app_of(client)[TOKENS]
    auth, _ = await tokens.issue(Auth(policies=["dev"], alias=Alias(name="late")),
                                 mount=MountInfo(path="auth/jwt/", accessor=accessor, default_lease_ttl=3600,
                                                 max_lease_ttl=7200))
    late = str(auth["client_token"])
    assert await _alive(client, late)
    await _settled(client, accessor)
    assert not await _alive(client, late)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "both 'from' and 'to' path must be specified as a string"),
        ({"from": "auth/jwt"}, "both 'from' and 'to' path must be specified as a string"),
        ({"from": "auth/jwt", "to": 5}, "both 'from' and 'to' path must be specified as a string"),
        ({"from": " auth/jwt", "to": "auth/x"}, "'from' path cannot contain trailing whitespace"),
        ({"from": "auth/jwt", "to": "auth/x "}, "'to' path cannot contain trailing whitespace"),
        ({"from": "auth/jwt", "to": "auth/"}, 'invalid destination mount path "auth/"'),
        ({"from": "auth/jwt", "to": "x"}, 'cannot remount auth mount to non-auth mount "x/"'),
        ({"from": "auth/nope", "to": "auth/x"}, 'no matching mount at "auth/nope/"'),
        ({"from": "auth/jwt/role/dev", "to": "auth/x"}, 'no matching mount at "auth/jwt/role/dev/"'),
        ({"from": "auth/token", "to": "auth/x"}, 'cannot remount "auth/token/"'),
        ({"from": "auth/jwt", "to": "auth/token/x"}, 'cannot remount to destination "auth/token/x/"'),
        ({"from": "auth/jwt", "to": "auth/jwt"}, 'path already in use at "auth/jwt/"'),
        ({"from": "auth/jwt", "to": "auth/jwt/sub"}, 'path already in use at "auth/jwt/"'),
        ({"from": "auth/jwt", "to": "auth/a"}, 'path already in use at "auth/a/b/"'),
        ({"from": "auth/jwt", "to": "auth/a/b/c"}, 'path already in use at "auth/a/b/"'),
        ({"from": "auth/jwt", "to": "auth/x/../y"}, "invalid destination mount: invalid mount path 'auth/x/../y'"),
        ({"from": "auth/jwt", "to": "auth/x*"}, "invalid destination mount: invalid mount path 'auth/x*'"),
        ({"from": "auth/jwt", "to": "auth//x"}, "invalid destination mount: invalid mount path 'auth//x'"),
        ({"from": "auth//jwt", "to": "auth/x"}, 'no matching mount at "auth//jwt/"'),
        ({"from": "auth/jwt//", "to": "auth/x"}, 'no matching mount at "auth/jwt//"'),
        ({"from": "auth/jwt/../jwt", "to": "auth/x"}, 'no matching mount at "auth/jwt/../jwt/"'),
        ({"from": "jwt", "to": "auth/x"}, "cannot remount to destination auth/x/"),
        ({"from": "sys", "to": "x"}, 'cannot remount "sys/"'),
        ({"from": "kv", "to": "kv2"}, 'no matching mount at "kv/"'),
    ],
)
async def test_refusals_change_nothing(client: Client, body: dict[str, Any], message: str) -> None:
    await _mount(client, "jwt")
    await _ok(client, "POST", "sys/auth/a/b", {"type": "jwt"})
    before = (await _ok(client, "GET", "sys/auth"))["data"]
    token = await _login(client, "jwt")
    assert await _call(client, "POST", "sys/remount", body) == (400, {"errors": [message]})
    assert (await _ok(client, "GET", "sys/auth"))["data"] == before
    assert await _alive(client, token)


async def test_a_mount_may_move_below_auth_tokens_ci(client: Client) -> None:
    """Vault protects auth/token by string prefix, so auth/tokens-ci could not be moved there."""
    await _mount(client, "tokens-ci")
    await _move(client, "auth/tokens-ci", "/auth/token2/")
    assert "token2/" in (await _ok(client, "GET", "sys/auth"))["data"]


async def test_remount_needs_sudo_and_its_status_needs_read(client: Client) -> None:
    await _mount(client, "jwt")
    policy = ('path "sys/remount" { capabilities = ["update"] }\n'
              'path "sys/remount/status/*" { capabilities = ["read"] }\n')
    await _ok(client, "POST", "sys/policies/acl/mover", {"policy": policy})
    token = (await _ok(client, "POST", "auth/token/create", {"policies": ["mover"]}))["auth"]["client_token"]
    body = {"from": "auth/jwt", "to": "auth/ci"}
    assert await _call(client, "POST", "sys/remount", body, token=token) == (403, {"errors": ["permission denied"]})
    await _ok(client, "POST", "sys/policies/acl/mover", {"policy": policy.replace('["update"]', '["update", "sudo"]')})
    status, out = await _call(client, "POST", "sys/remount", body, token=token)
    assert status == 200, out
    status, out = await _call(client, "GET", f"sys/remount/status/{out['data']['migration_id']}", token=token)
    assert status == 200 and out["data"]["migration_info"]["status"] == "success"
    assert (await _call(client, "GET", "sys/remount/status/x", token=None))[0] == 403


@pytest.mark.parametrize("migration_id", ["00000000-0000-0000-0000-000000000000", "nope", "a/b", "%00"])
async def test_an_unknown_migration_is_a_bare_404(client: Client, migration_id: str) -> None:
    assert await _call(client, "GET", f"sys/remount/status/{migration_id}") == (404, {"errors": []})


async def test_a_revocation_a_stop_cut_short_is_finished_at_the_next_start(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "authmount.db"
    first: Client = await aiohttp_client(make_test_server(create_app(_settings(db))))
    accessor = await _mount(first, "jwt")
    token = await _login(first, "jwt")

    async def broken(self: TokenStore, old_path: str, mount_accessor: str) -> int:
        raise OSError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(TokenStore, "revoke_moved", broken)
        migration_id = await _move(first, "auth/jwt", "auth/ci")
        status, out = await _call(first, "GET", f"sys/remount/status/{migration_id}")
        assert out["data"]["migration_info"]["status"] == "failure"
    assert await _alive(first, token)
    assert [m.entry.moves for m in app_of(first)[MOUNTS].mounts.values() if m.entry.accessor == accessor] == [
        [{"id": migration_id, "from": "jwt/"}]]
    await first.close()

    second: Client = await aiohttp_client(make_test_server(create_app(_settings(db))))
    await _settled(second, accessor)
    assert not await _alive(second, token)
    status, out = await _call(second, "GET", f"sys/remount/status/{migration_id}")
    assert out["data"]["migration_info"]["status"] == "success"
    assert "moves" not in str(await app_of(second)[STORAGE].get("core/mounts"))
