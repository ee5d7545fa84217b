"""Response wrapping: ``X-Vault-Wrap-TTL`` on a login, a token creation or
``sys/wrapping/wrap`` answers a single-use wrapping token; ``sys/wrapping/lookup|unwrap|rewrap`` in Vault's shapes; anything else asked to
be wrapped is refused with a 400, never answered unwrapped. The response is stored sealed, the
wrapping token only as an HMAC."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from plugin import registry
from plugin.framework import Auth, Backend, Operation, PathSpec, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from plugin.sealing import SealError
from plugin.storage import InMemoryStorage
from server.app import create_app
from server.appkeys import TOKENS
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.sys.wrapping import MAX_WRAPPED_BYTES
from server.tokens.store import ID_PREFIX, WRAP_PREFIX
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-tests"
H = {"X-Vault-Token": ROOT}
INVALID = ["wrapping token is not valid or does not exist"]


class LoginBackend(Backend):
    """An auth method with a ``login`` that issues tokens and a ``profile`` that does not."""

    type_name = "wraptest"

    def __init__(self) -> None:
        super().__init__()
        policies = {"policies": Field(FieldType.COMMA_STRING_SLICE, "Policies.")}
        self.paths = [
            PathSpec("login", FieldSet(policies), {Operation.UPDATE: self._login}, unauthenticated=True,
                     issues_token=True),
            PathSpec("hello", FieldSet({}), {Operation.UPDATE: self._hello}, unauthenticated=True),
            PathSpec("silent", FieldSet({}), {Operation.UPDATE: self._hello}, unauthenticated=True, issues_token=True),
        ]

    async def _login(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(auth=Auth(display_name="w", policies=values.get("policies", []), ttl=600))

    async def _hello(self, req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"hello": "world"})


registry.register("wraptest", LoginBackend)


@pytest.fixture
async def storage() -> InMemoryStorage:
    return InMemoryStorage()


@pytest.fixture
async def client(aiohttp_client: Any, storage: InMemoryStorage) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    settings = dataclasses.replace(settings, max_lease_ttl=7200, default_lease_ttl=3600)
    c: Client = await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    assert (await c.post("/v1/sys/auth/w", json={"type": "wraptest"}, headers=H)).status == 204
    return c


async def wrapped_token_create(client: Client, ttl: str = "60s", **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/auth/token/create", json={"policies": ["dev"], **body},
                             headers={**H, "X-Vault-Wrap-TTL": ttl})
    assert resp.status == 200, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


@pytest.mark.parametrize("path", ["auth/token/create-orphan", "auth/token/create/wrapped-role"])
async def test_every_token_creation_path_is_wrapped(client: Client, path: str) -> None:
    """An orphan and a token of a role are wrapped as a child is (each path issues a token)."""
    assert (await client.post("/v1/auth/token/roles/wrapped-role", json={}, headers=H)).status == 204
    resp = await client.post(f"/v1/{path}", json={"policies": ["dev"]}, headers={**H, "X-Vault-Wrap-TTL": "1m"})
    out = await resp.json()
    assert resp.status == 200 and out["auth"] is None and out["wrap_info"]["creation_path"] == path
    unwrapped = await (await client.post("/v1/sys/wrapping/unwrap", json={"token": out["wrap_info"]["token"]},
                                         headers=H)).json()
    assert unwrapped["auth"]["policies"] == ["default", "dev"]


async def test_token_create_is_wrapped_in_vaults_shape(client: Client) -> None:
    out = await wrapped_token_create(client, "2m")
    assert out["auth"] is None and out["data"] is None
    info = out["wrap_info"]
    assert set(info) == {"token", "accessor", "ttl", "creation_time", "creation_path", "wrapped_accessor"}
    assert info["ttl"] == 120 and info["creation_path"] == "auth/token/create"
    assert info["creation_time"].endswith("Z")
    looked = await (await client.post("/v1/auth/token/lookup", json={"token": info["token"]}, headers=H)).json()
    assert looked["data"]["policies"] == ["response-wrapping"] and looked["data"]["num_uses"] == 1
    assert looked["data"]["orphan"] is True and looked["data"]["renewable"] is False
    assert looked["data"]["accessor"] == info["accessor"]

    resp = await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    unwrapped = await resp.json()
    assert unwrapped["auth"]["accessor"] == info["wrapped_accessor"] and unwrapped["auth"]["policies"] == [
        "default", "dev"]
    assert unwrapped["wrap_info"] is None and unwrapped["request_id"] == out["request_id"]
    # the unwrapped token works; the wrapping token is gone
    child = {"X-Vault-Token": unwrapped["auth"]["client_token"]}
    assert (await client.get("/v1/auth/token/lookup-self", headers=child)).status == 200
    again = await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
    assert again.status == 400 and (await again.json())["errors"] == INVALID
    assert (await client.post("/v1/auth/token/lookup", json={"token": info["token"]}, headers=H)).status == 403


async def test_login_is_wrapped_and_unwrapped_with_the_wrapping_token_itself(client: Client) -> None:
    """``vault unwrap`` without an argument: the wrapping token is the calling token, and the
    CLI sends the body ``null``."""
    resp = await client.post("/v1/auth/w/login", json={"policies": "ops"}, headers={"X-Vault-Wrap-TTL": "300"})
    info = (await resp.json())["wrap_info"]
    assert info["creation_path"] == "auth/w/login" and info["ttl"] == 300
    wrapping = {"X-Vault-Token": info["token"], "Content-Type": "application/json"}
    resp = await client.put("/v1/sys/wrapping/unwrap", data=b"null", headers=wrapping)
    assert resp.status == 200, await resp.text()
    login = await resp.json()
    assert login["auth"]["policies"] == ["default", "ops"] and login["mount_type"] == "wraptest"
    # used up: the token is revoked after its one use
    assert (await client.put("/v1/sys/wrapping/unwrap", data=b"null", headers=wrapping)).status == 403


async def test_lookup_uses_nothing_and_needs_no_token(client: Client) -> None:
    info = (await wrapped_token_create(client))["wrap_info"]
    for _ in range(2):
        resp = await client.post("/v1/sys/wrapping/lookup", json={"token": info["token"]})
        assert resp.status == 200
        data = (await resp.json())["data"]
        assert data == {"creation_path": "auth/token/create", "creation_time": info["creation_time"],
                        "creation_ttl": 60}
    # the calling token as the wrapping token, without using it up; a GET too, as in Vault
    resp = await client.post("/v1/sys/wrapping/lookup", headers={"X-Vault-Token": info["token"]})
    assert resp.status == 200
    resp = await client.get("/v1/sys/wrapping/lookup", headers={"X-Vault-Token": info["token"]})
    assert resp.status == 200 and (await resp.json())["data"]["creation_ttl"] == 60
    nothing = await client.post("/v1/sys/wrapping/lookup", json={})
    assert nothing.status == 403  # OpenBao 2.7.2's answer to a lookup of no token at all
    assert (await nothing.json())["errors"] == ["error validating wrapping token: token is empty"]
    assert (await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)).status == 200
    gone = await client.post("/v1/sys/wrapping/lookup", json={"token": info["token"]})
    assert gone.status == 400 and (await gone.json())["errors"] == INVALID


async def test_rewrap_moves_the_response_behind_a_new_token(client: Client) -> None:
    first = (await wrapped_token_create(client, "90s"))["wrap_info"]
    resp = await client.post("/v1/sys/wrapping/rewrap", json={"token": first["token"]}, headers=H)
    assert resp.status == 200
    out = await resp.json()
    second = out["wrap_info"]
    assert out["auth"] is None and second["ttl"] == 90 and second["creation_path"] == "auth/token/create"
    assert second["token"] != first["token"] and "wrapped_accessor" not in second
    old = await client.post("/v1/sys/wrapping/unwrap", json={"token": first["token"]}, headers=H)
    assert old.status == 400
    new = await client.post("/v1/sys/wrapping/unwrap", json={"token": second["token"]}, headers=H)
    assert (await new.json())["auth"]["accessor"] == first["wrapped_accessor"]


async def test_concurrent_unwraps_exactly_one_gets_the_response(client: Client) -> None:
    info = (await wrapped_token_create(client))["wrap_info"]

    async def unwrap(as_header: bool) -> int:
        if as_header:
            resp = await client.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": info["token"]})
        else:
            resp = await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
        return resp.status

    statuses = await asyncio.gather(*(unwrap(i % 2 == 0) for i in range(8)))
    assert statuses.count(200) == 1, statuses


async def test_stored_sealed_and_hashed_only(client: Client, storage: InMemoryStorage) -> None:
    info = (await wrapped_token_create(client))["wrap_info"]
    rows = {key: await storage.get(key) for key in await _all_keys(storage)}
    text = json.dumps(rows)
    assert info["token"] not in text  # the wrapping token: only its HMAC (and its selector, a locator)
    (wrap_key,) = [k for k in rows if k.startswith("sys/wrapping/")]  # the layout an upgrade keeps
    record = rows[wrap_key]
    assert record is not None and set(record) == {"response", "creation_path", "creation_time", "creation_ttl"}
    assert "client_token" not in text and "accessor" not in record["response"]  # the wrapped token: sealed
    row_id = wrap_key.removeprefix(WRAP_PREFIX)
    assert info["token"].startswith("hvs." + row_id) and ID_PREFIX + row_id in rows
    # the sealing context is the storage key and the field: moved to another key, it does not open
    await storage.put(WRAP_PREFIX + "elsewhere", record)
    keyring = app_of(client)[TOKENS].sealer
    with pytest.raises(SealError):
        keyring.unseal(record["response"], WRAP_PREFIX + "elsewhere#response")
    unwrapped = await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
    child = (await unwrapped.json())["auth"]["client_token"]
    assert child not in text  # the wrapped token was nowhere in storage in the clear


async def test_the_response_goes_with_its_token(client: Client, storage: InMemoryStorage) -> None:
    """Revoked or expired, the wrapping token takes its response with it."""
    info = (await wrapped_token_create(client))["wrap_info"]
    assert any(k.startswith(WRAP_PREFIX) for k in await _all_keys(storage))
    assert (await client.post("/v1/auth/token/revoke-accessor", json={"accessor": info["accessor"]},
                              headers=H)).status == 204
    assert not any(k.startswith(WRAP_PREFIX) for k in await _all_keys(storage))
    info = (await wrapped_token_create(client, "1s"))["wrap_info"]
    await asyncio.sleep(1.1)
    assert await app_of(client)[TOKENS].sweep() >= 1
    assert not any(k.startswith(WRAP_PREFIX) for k in await _all_keys(storage))
    resp = await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)
    assert resp.status == 400 and (await resp.json())["errors"] == INVALID


@pytest.mark.parametrize(
    ("method", "path", "body", "ttl", "message"),
    [
        ("GET", "/v1/auth/token/lookup-self", None, "60s", "auth/token/lookup-self: this response cannot be wrapped"),
        ("POST", "/v1/auth/w/hello", {}, "60s", "auth/w/hello: this response cannot be wrapped"),
        ("POST", "/v1/auth/w/silent", {}, "60s", "auth/w/silent: this response cannot be wrapped"),
        ("GET", "/v1/sys/auth", None, "60s", "sys/auth: this response cannot be wrapped"),
        ("POST", "/v1/identity/group", {"name": "ops"}, "60s", "identity/group: this response cannot be wrapped"),
        ("POST", "/v1/sys/wrapping/unwrap", {"token": "x"}, "60s",
         "sys/wrapping/unwrap: this response cannot be wrapped"),
        ("POST", "/v1/auth/token/create", {}, "-5s", "invalid X-Vault-Wrap-TTL: cannot provide negative value"),
        ("POST", "/v1/auth/token/create", {}, "soon", 'invalid X-Vault-Wrap-TTL: time: invalid duration "soon"'),
        ("POST", "/v1/auth/token/create", {}, "3h", "invalid X-Vault-Wrap-TTL: 10800s is above max_lease_ttl (7200s)"),
        ("POST", "/v1/auth/w/login", {}, "3h", "invalid X-Vault-Wrap-TTL: 10800s is above max_lease_ttl (7200s)"),
    ],
    ids=["token-lookup", "mount-data", "issuing-path-without-auth", "sys", "identity", "unwrap", "negative-ttl",
         "not-a-duration", "above-max-ttl", "login-above-max-ttl"],
)
async def test_what_cannot_be_wrapped_is_refused(
    client: Client, method: str, path: str, body: Any, ttl: str, message: str
) -> None:
    before = len(await app_of(client)[TOKENS].list_accessors())
    resp = await client.request(method, path, json=body, headers={**H, "X-Vault-Wrap-TTL": ttl})
    assert resp.status == 400
    (error,) = (await resp.json())["errors"]
    assert error.startswith(message), error
    assert len(await app_of(client)[TOKENS].list_accessors()) == before  # nothing minted, nothing wrapped


@pytest.mark.parametrize(("method", "path", "body"), [("POST", "/v1/auth/token/create", {}), ("GET", "/v1/sys/auth", None)])
async def test_a_zero_wrap_ttl_asks_for_no_wrapping(client: Client, method: str, path: str, body: Any) -> None:
    """OpenBao 2.7.2 answers ``X-Vault-Wrap-TTL: 0`` unwrapped, even where it could wrap."""
    resp = await client.request(method, path, json=body, headers={**H, "X-Vault-Wrap-TTL": "0"})
    assert resp.status == 200
    answer = await resp.json()
    assert answer["wrap_info"] is None and (answer["auth"] is not None or answer["data"])


async def test_wrapping_tokens_do_nothing_else(client: Client) -> None:
    """The ``response-wrapping`` policy: unwrap only; it cannot be written, deleted or assigned."""
    info = (await wrapped_token_create(client))["wrap_info"]
    denied = await client.post("/v1/sys/wrapping/rewrap", headers={"X-Vault-Token": info["token"]})
    assert denied.status == 403  # as in Vault; and that use was its only one
    assert (await client.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}, headers=H)).status == 400
    for method, body in (("PUT", {"policy": 'path "x" { capabilities = ["read"] }'}), ("DELETE", None)):
        resp = await client.request(method, "/v1/sys/policies/acl/response-wrapping", json=body, headers=H)
        assert resp.status == 400
    assert (await client.post("/v1/auth/token/create", json={"policies": ["response-wrapping"]},
                              headers=H)).status == 400


async def _all_keys(storage: InMemoryStorage) -> list[str]:
    out: list[str] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        for key in await storage.list(prefix):
            (stack.append if key.endswith("/") else out.append)(prefix + key)
    return out


async def test_an_empty_wrap_ttl_header_asks_for_nothing(client: Client) -> None:
    """Vault reads the header with Go's ``Header.Get``: empty is the same as absent."""
    resp = await client.post("/v1/auth/token/create", json={"policies": ["dev"]},
                             headers={**H, "X-Vault-Wrap-TTL": " "})
    body = await resp.json()
    assert resp.status == 200 and body["wrap_info"] is None and body["auth"]["client_token"]


async def test_wrapping_data(client: Client, storage: InMemoryStorage) -> None:
    """``sys/wrapping/wrap`` (Vault Agent's sinks with ``wrap_ttl``): any JSON object sent, kept
    sealed behind a wrapping token that a default-policy token gets; no parameter is unknown;
    the wrap TTL is required; at most ``MAX_WRAPPED_BYTES`` of JSON, so it is no store."""
    user = (await (await client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=H)).json())
    head = {"X-Vault-Token": user["auth"]["client_token"]}
    secret = {"token": "hvs.agent-token", "list": [1, 2], "nested": {"k": "v"}}
    resp = await client.post("/v1/sys/wrapping/wrap", json=secret, headers={**head, "X-Vault-Wrap-TTL": "90s"})
    assert resp.status == 200
    out = await resp.json()
    info = out["wrap_info"]
    assert out["data"] is None and out["warnings"] is None
    assert info["creation_path"] == "sys/wrapping/wrap" and info["ttl"] == 90 and "wrapped_accessor" not in info
    stored = [repr(await storage.get(k)) for k in await _all_keys(storage) if k.startswith(WRAP_PREFIX)]
    assert stored and not any("hvs.agent-token" in text for text in stored)  # sealed
    resp = await client.post("/v1/sys/wrapping/unwrap", json={}, headers={"X-Vault-Token": info["token"]})
    assert (await resp.json())["data"] == secret

    for asked in ({}, {"X-Vault-Wrap-TTL": "0"}):  # a zero TTL asks for no wrapping (Vault)
        resp = await client.post("/v1/sys/wrapping/wrap", json=secret, headers={**head, **asked})
        assert resp.status == 400 and (await resp.json())["errors"] == ["endpoint requires response wrapping to be used"]
    big = {"blob": "x" * MAX_WRAPPED_BYTES}
    resp = await client.post("/v1/sys/wrapping/wrap", json=big, headers={**head, "X-Vault-Wrap-TTL": "90s"})
    assert resp.status == 400
    assert (await resp.json())["errors"][0].startswith(f"the data to wrap is {MAX_WRAPPED_BYTES + 11} bytes of JSON")
    resp = await client.post("/v1/sys/wrapping/wrap", json={}, headers={**head, "X-Vault-Wrap-TTL": "90s"})
    assert resp.status == 200 and (await resp.json())["wrap_info"]["ttl"] == 90
