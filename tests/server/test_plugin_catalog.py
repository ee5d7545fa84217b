"""``sys/plugins/catalog``: the built-in auth methods as Vault's catalog shows its plugins
(``vault plugin list``, ``vault plugin info``); nothing can be registered."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from pytest_aiohttp import AiohttpClient

from plugin import registry
from server.mounts import RUNNING_VERSION
from tests.server.httpkit import Client, answer, dev_client

ROOT = "root-token-for-catalog-tests"
BUILTIN = {"builtin": True, "deprecation_status": "supported", "type": "auth", "version": RUNNING_VERSION}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await dev_client(aiohttp_client, ROOT)


async def call(client: Client, method: str, path: str, body: Any = None, token: str = ROOT) -> tuple[int, Any]:
    return await answer(client, method, path, body, token=token)


async def test_the_catalog_lists_the_two_built_in_methods(client: Client) -> None:
    # the registry's methods: jwt and oidc (and the fake ones other test modules register)
    names = sorted(registry.registered_types())
    assert {"jwt", "oidc"} <= set(names)
    status, out = await call(client, "GET", "sys/plugins/catalog")
    assert status == 200 and out["data"] == {"auth": names, "detailed": [{**BUILTIN, "name": n} for n in names]}
    assert (await call(client, "LIST", "sys/plugins/catalog/auth"))[1]["data"] == {"keys": names}
    assert (await call(client, "LIST", "sys/plugins/catalog/secret")) == (404, {"errors": []})  # Vault's empty list
    assert (await call(client, "LIST", "sys/plugins/catalog/database")) == (404, {"errors": []})


async def test_one_plugin_reads_as_vaults_and_the_running_version_is_the_mounts(client: Client) -> None:
    status, out = await call(client, "GET", "sys/plugins/catalog/auth/jwt")
    assert status == 200 and out["data"] == {"builtin": True, "deprecation_status": "supported", "name": "jwt",
                                             "version": RUNNING_VERSION, "args": None, "command": "", "sha256": "",
                                             "oci": False, "declarative": False}
    assert list(out["data"]) == sorted(out["data"])  # in Vault's order (a Go map's: sorted)
    assert (await call(client, "GET", f"sys/plugins/catalog/auth/oidc?version={quote(RUNNING_VERSION)}"))[0] == 200
    assert (await call(client, "POST", "sys/auth/j", {"type": "jwt"}))[0] == 204
    mount = (await call(client, "GET", "sys/auth"))[1]["data"]["j/"]
    assert mount["running_plugin_version"] == RUNNING_VERSION


@pytest.mark.parametrize("path", ["sys/plugins/catalog/auth/userpass", "sys/plugins/catalog/secret/jwt",
                                  "sys/plugins/catalog/auth/jwt?version=v1.0.0"])
async def test_a_plugin_it_does_not_have_is_not_found(client: Client, path: str) -> None:
    assert await call(client, "GET", path) == (404, {"errors": []})


@pytest.mark.parametrize(("method", "body"), [("PUT", {"sha256": "00" * 32, "command": "x"}), ("DELETE", None)])
async def test_registering_or_removing_a_plugin_is_not_served(client: Client, method: str, body: Any) -> None:
    assert await call(client, method, "sys/plugins/catalog/auth/jwt", body) == (405, {"errors": ["unsupported operation"]})
    assert (await call(client, "GET", "sys/plugins/catalog/auth/jwt"))[0] == 200


async def test_a_type_and_a_plugin_need_sudo_the_catalog_read(client: Client) -> None:
    policy = 'path "sys/plugins/catalog*" { capabilities = ["read", "list"] }'
    assert (await call(client, "PUT", "sys/policies/acl/catalog", {"policy": policy}))[0] == 204
    token = (await call(client, "POST", "auth/token/create", {"policies": ["catalog"]}))[1]["auth"]["client_token"]
    assert (await call(client, "GET", "sys/plugins/catalog", token=token))[0] == 200
    for method, path in (("LIST", "sys/plugins/catalog/auth"), ("GET", "sys/plugins/catalog/auth/jwt")):
        assert await call(client, method, path, token=token) == (403, {"errors": ["permission denied"]})
