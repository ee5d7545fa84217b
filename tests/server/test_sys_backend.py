"""The sys backend: canonical paths before the ACL, one declaration for validation and the
OpenAPI document, sudo and unauthenticated paths as declared."""

from __future__ import annotations

import base64
import re
from contextlib import nullcontext
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest, UnsupportedPath
from server.app import create_app
from server.http.listverb import make_test_server
from server.mounts import MOUNT_CONFIG_FIELDS, RUNNING_VERSION, TUNE_FIELDS
from server.settings import Settings, StorageSettings
from server.sys.auth import ENABLE_FIELDS
from server.sys.backend import SysBackend
from server.sys.core import acl_path
from tests.server.httpkit import Client

ROOT = "root-token-for-sys-backend-tests"
H = {"X-Vault-Token": ROOT}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    assert (await client.post("/v1/sys/auth/jwt", json={"type": "jwt"}, headers=H)).status == 204
    return client


def _backend() -> SysBackend:
    return SysBackend(core=None)  # type: ignore[arg-type]  # building it reads nothing from core


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("auth", nullcontext("sys/auth")),
        ("auth/jwt", nullcontext("sys/auth/jwt")),
        ("auth/jwt/", nullcontext("sys/auth/jwt")),
        ("auth//jwt//", nullcontext("sys/auth/jwt")),
        ("auth/team/jwt", nullcontext("sys/auth/team/jwt")),
        ("auth/jwt/tune", nullcontext("sys/auth/jwt/tune")),
        ("auth/jwt//tune", nullcontext("sys/auth/jwt/tune")),
        ("auth/jwt/tune//", nullcontext("sys/auth/jwt/tune")),
        ("auth//team/jwt/tune", nullcontext("sys/auth/team/jwt/tune")),
        ("auth/tune", nullcontext("sys/auth/tune")),  # a mount named tune, as in Vault
        ("auth/ jwt", pytest.raises(InvalidRequest, match="invalid mount path")),
        ("auth/jwt\t/tune", pytest.raises(InvalidRequest, match="invalid mount path")),
        ("auth/a//b", pytest.raises(InvalidRequest, match="invalid mount path")),
        ("auth//", pytest.raises(InvalidRequest, match="mount path cannot be empty")),
        ("policies/acl", nullcontext("sys/policies/acl")),
        ("policies/acl/", nullcontext("sys/policies/acl")),
        ("policies/acl/Dev", nullcontext("sys/policies/acl/dev")),
        ("policies/acl/ADMIN/", nullcontext("sys/policies/acl/admin")),
        ("policy/PolSelf", nullcontext("sys/policy/polself")),
        ("policy/ admin", pytest.raises(InvalidRequest, match="leading or trailing whitespace")),
        ("policy/a/b", pytest.raises(InvalidRequest, match='invalid policy name "a/b"')),
        ("openapi", nullcontext("sys/internal/specs/openapi")),
        ("internal/specs/openapi", nullcontext("sys/internal/specs/openapi")),
        ("capabilities-self", nullcontext("sys/capabilities-self")),
        ("health", nullcontext("sys/health")),
        ("mounts", nullcontext("sys/mounts")),
        ("mounts/auth/jwt//tune", nullcontext("sys/mounts/auth/jwt/tune")),
        ("mounts/auth//team/jwt/tune/", nullcontext("sys/mounts/auth/team/jwt/tune")),
        ("mounts/auth/jwt", pytest.raises(UnsupportedPath)),
        ("mounts/secret", pytest.raises(UnsupportedPath)),
        ("wrapping/unwrap", nullcontext("sys/wrapping/unwrap")),
        ("wrapping/wrap", nullcontext("sys/wrapping/wrap")),
        ("wrapping/nothing", pytest.raises(UnsupportedPath)),
        ("auth/", pytest.raises(UnsupportedPath)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_acl_judges_the_canonical_path(rel: str, expected: Any) -> None:
    with expected as path:
        assert acl_path(_backend().resolve(rel)) == path


def test_sudo_and_unauthenticated_are_declared() -> None:
    specs = {spec.pattern: spec for spec in _backend().paths}
    unauthenticated = {p for p, s in specs.items() if s.unauthenticated}
    sudo = {p for p, s in specs.items() if s.sudo}
    assert unauthenticated == {"health", "seal-status", "init", "leader", "wrapping/lookup", "replication/status",
                               "internal/ui/mounts", "internal/ui/mounts/(?P<path>.+)",  # as Vault's internal/ui/mounts*
                               *(p for p in specs if specs[p].summary.startswith("Not served by authmount"))}
    assert {p for p in specs if specs[p].summary.startswith("Not served by authmount")} == {  # server/sys/seal.py
        "seal", "unseal", "generate-root/attempt", "generate-root/update", "generate-root-token/attempt",
        "generate-root-token/update", "decode-token", "rekey/init", "rekey/update", "rekey/verify", "rekey/backup",
        "rotate/root", "rotate/root/init", "rotate/root/update"}
    # sys/mounts/auth/<path>/tune changes what sys/auth/<path>/tune does: sudo on both
    assert {p.split("/")[0] for p in sudo} == {
        "auth", "mounts", "rotate", "key-status", "audit", "config", "leases", "remount", "plugins", "step-down",
    }
    # Vault's root path is plugins/catalog/*: a type and a plugin, not the catalog
    assert {p for p in sudo if p.startswith("plugins")} == {p for p in specs if p.startswith("plugins/catalog/")}
    assert not specs["plugins/catalog"].sudo
    assert specs["remount"].sudo and not specs["remount/status/(?P<migration_id>.+)"].sudo  # as in OpenBao
    # OpenBao's root paths hold no policy path: a Vault policy that manages policies works here
    assert not any(s.sudo for p, s in specs.items() if p.startswith("polic"))
    # Vault's root paths: the prefix revocations and the lease listing, not lookup or revoke of one lease
    assert {p for p in sudo if p.startswith("leases")} == {
        "leases/lookup/(?P<prefix>.*)", "leases/revoke-prefix/(?P<prefix>.+)", "leases/revoke-force/(?P<prefix>.+)"}
    assert not specs["mounts"].sudo  # the read-only listing
    # Vault's root paths: config/auditing/*, not config/state (vault debug reads it with read alone)
    assert {p for p in set(specs) - sudo if p.startswith(("auth/", "audit/", "config/"))} == {"config/state/sanitized"}
    assert not specs["auth"].sudo  # the listing: Vault's root path is auth/*, not auth
    # Vault: audit-hash needs update on its path, not sudo; metrics needs read.
    assert not specs[r"audit-hash/(?P<path>[\s\S]+)"].sudo and not specs["metrics"].sudo


def test_tune_path_takes_the_tune_declaration() -> None:
    tune = next(s for s in _backend().paths if s.pattern.endswith("tune/*"))
    # and two of Vault's fields the tune refuses in Vault's words
    assert [n for n in tune.fields if n != "path"] == [*TUNE_FIELDS, "plugin_version", "user_lockout_config"]
    assert set(TUNE_FIELDS) == set(MOUNT_CONFIG_FIELDS) | {"description", "options"}
    cli_tune = next(s for s in _backend().paths if s.pattern.startswith("mounts/auth/"))
    assert cli_tune.fields is tune.fields and cli_tune.operations.keys() == tune.operations.keys()


# -- the OpenAPI document ----------------------------------------------------------------------
def _route(pattern: str) -> str:
    # a capture's pattern may hold one level of groups (Vault's name regex: ``a(?:[b.-]*c)?``)
    capture = r"\(\?P<(\w+)>(?:[^()]|\((?:[^()])*\))*\)"
    return "/sys/" + re.sub(capture, r"{\1}", pattern).removesuffix("/*").removesuffix("/?")


async def test_openapi_lists_exactly_the_sys_paths_served(client: Client) -> None:
    body = await (await client.get("/v1/sys/internal/specs/openapi", headers=H)).json()
    documented = {path: ops for path, ops in body["paths"].items() if path.startswith("/sys/")}
    assert set(documented) == {_route(spec.pattern) for spec in _backend().paths}
    # Every documented operation reaches its handler: no 404 (no handler) and no 405.
    # (revocations by prefix name no token, so the root token of the requests lives on)
    fill = {"{path}": "jwt", "{name}": "default", "{header}": "x-team", "{prefix}": "auth/token",
            "{url_lease_id}": "auth/nope/x", "revoke-{prefix}": "auth/nope", "{urlalgorithm}": "sha2-256",
            "{urlsource}": "platform", "{urlbytes}": "8", "{target}": "goroutine", "{type}": "auth", "{builtin}": "sys", "{mount_accessor}": "auth_jwt_1", "{alias_identifier}": "bob",
            "plugin-{name}": "jwt"}
    resp = await client.post("/v1/sys/config/auditing/request-headers/x-team", json={"hmac": True}, headers=H)
    assert resp.status == 204, await resp.text()  # a header to read
    assert (await client.post("/v1/sys/auth/mv", json={"type": "jwt"}, headers=H)).status == 204
    resp = await client.post("/v1/sys/remount", json={"from": "auth/mv", "to": "auth/mv2"}, headers=H)
    fill["{migration_id}"] = (await resp.json())["data"]["migration_id"]  # a move to read
    resp = await client.post("/v1/sys/quotas/rate-limit/default", json={"rate": 10000}, headers=H)
    assert resp.status == 204, await resp.text()  # a quota to list and read
    for path, ops in documented.items():
        kind = "revoke-" if "revoke" in path else "plugin-" if "plugins/catalog" in path else ""

        def value(m: re.Match[str], kind: str = kind) -> str:
            return fill.get(kind + m.group(0)) or fill[m.group(0)]

        url = "/v1" + re.sub(r"\{\w+\}", value, path)
        for verb, op in ops.items():
            if verb.startswith("x-") or verb == "parameters":
                continue
            if verb == "delete":
                url = url.replace("/jwt", "/spare").replace("/default", "/spare")
            query = "?list=true" if any(p["name"] == "list" for p in op.get("parameters", ())) else ""
            resp = await client.request(verb.upper(), url + query, json={} if verb == "post" else None, headers=H)
            assert resp.status not in (404, 405), (verb, url, resp.status, await resp.text())
    # A path the sys backend does not declare is not served.
    for path in ("/v1/sys/mounts/secret", "/v1/sys/wrapping/nothing", "/v1/sys/auth/", "/v1/sys/policies"):
        resp = await client.get(path, headers=H)
        assert resp.status == 404 and "no handler for route" in (await resp.json())["errors"][0]


async def test_openapi_document_is_valid_openapi_3(client: Client) -> None:
    """The document, and each path's help document, validate against the OpenAPI 3.0 schema:
    path parameters declared, responses and operation ids present, ids unique across two
    mounts of one type (OpenBao 2.7's document has 11 errors here, duplicate operation ids;
    docs/vault-differences.md)."""
    for path, kind in (("gitlab", "jwt"), ("sso", "oidc")):
        assert (await client.post(f"/v1/sys/auth/{path}", json={"type": kind}, headers=H)).status == 204
    doc = await (await client.get("/v1/sys/internal/specs/openapi", headers=H)).json()
    assert [str(e.message) for e in OpenAPIV30SpecValidator(doc).iter_errors()] == []
    assert doc["servers"] == [{"url": "/v1"}]  # routes are relative to it
    ids = [op["operationId"] for entry in doc["paths"].values() for verb, op in entry.items()
           if verb in ("get", "post", "delete")]
    assert len(ids) == len(set(ids)) and "write-auth-gitlab-role-name" in ids and "write-auth-jwt-role-name" in ids
    role = doc["paths"]["/auth/sso/role/{name}"]
    assert role["parameters"] == [{
        "name": "name", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$"},
        "description": "Name of the role (lower-cased before the ACL check)."}]
    assert "name" not in role["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert role["delete"]["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Errors"}
    fill = {"{path}": "jwt", "{name}": "default", "{header}": "x-team", "{id}": "x", "{role_name}": "x"}
    for route in ("/sys/auth/{path}/tune", "/auth/jwt/role/{name}", "/auth/token/create/{role_name}",
                  "/identity/group/id/{id}", "/sys/health"):
        url = "/v1" + re.sub(r"\{\w+\}", lambda m: fill[m.group(0)], route) + "?help=1"
        reply = await (await client.get(url, headers=H)).json()
        assert "openapi" in reply, (route, reply)
        help_doc = reply["openapi"]
        assert [str(e.message) for e in OpenAPIV30SpecValidator(help_doc).iter_errors()] == [], route
        assert len(help_doc["paths"]) == 1, route


async def test_openapi_says_what_the_server_answers(client: Client) -> None:
    """What a schemathesis run against the document found it leaving out: tidy's 202, a
    DELETE's 200 with warnings, duration defaults as strings (the type the document gives),
    required fields, and the pattern a path's name must match."""
    assert (await client.post("/v1/sys/auth/schem", json={"type": "jwt"}, headers=H)).status == 204
    doc = await (await client.get("/v1/sys/internal/specs/openapi", headers=H)).json()
    paths = doc["paths"]
    assert "202" in paths["/auth/token/tidy"]["post"]["responses"]
    assert (await client.post("/v1/auth/token/tidy", headers=H)).status == 202
    assert "200" in paths["/sys/policies/acl/{name}"]["delete"]["responses"]
    tune = paths["/sys/auth/{path}/tune"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert tune["properties"]["default_lease_ttl"]["default"] == "0s"
    cel = paths["/auth/schem/cel/role/{name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert cel["required"] == ["cel_program"]
    for route in ("/auth/token/lookup-accessor", "/auth/token/renew-accessor", "/sys/capabilities-accessor",
                  "/sys/fingerprint"):
        body = paths[route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == (["path"] if route == "/sys/fingerprint" else ["accessor"]), route
    [param] = paths["/auth/token/roles/{role_name}"]["parameters"]
    assert param["schema"]["pattern"] == "^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$"
    # a LIST's fields are its query parameters (OpenBao's document leaves them out)
    for route in ("/auth/schem/role", "/auth/schem/cel/role", "/auth/token/accessors"):
        assert paths[route]["get"]["parameters"] == [
            {"name": "list", "in": "query", "required": True, "schema": {"type": "string", "enum": ["true"]}},
            {"name": "after", "in": "query", "schema": {"type": "string", "default": ""},
             "description": "Optional entry to list begin listing after, not required to exist."},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 0},
             "description": "Optional number of entries to return; defaults to all entries."}]
    assert [p["name"] for p in paths["/auth/token/roles"]["get"]["parameters"]] == ["list"]


async def test_openapi_tune_fields_are_the_schema(client: Client) -> None:
    body = await (await client.get("/v1/sys/openapi", headers=H)).json()
    tune = body["paths"]["/sys/auth/{path}/tune"]
    props = tune["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert list(props) == [*TUNE_FIELDS, "plugin_version", "user_lockout_config"]
    assert props["default_lease_ttl"] == TUNE_FIELDS["default_lease_ttl"].openapi()
    assert props["token_type"]["default"] == "default-service"
    enable = body["paths"]["/sys/auth/{path}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(enable["properties"]) == set(ENABLE_FIELDS) - {"path"}
    assert tune["x-vault-sudo"] is True and "x-vault-unauthenticated" not in tune
    assert body["paths"]["/sys/health"]["x-vault-unauthenticated"] is True
    assert "/auth/jwt/login" in body["paths"] and body["paths"]["/auth/jwt/login"]["x-vault-unauthenticated"]


# -- validation from the declaration ------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "errors"),
    [
        ({"default_lease_ttl": "1h", "max_lease_ttl": "2h", "force_no_cache": "false"}, 204, None),
        ({"default_lease_ttl": "soon"}, 400, ['invalid default_lease_ttl: time: invalid duration "soon"']),
        ({"default_lease_ttl": "3h", "max_lease_ttl": "2h"}, 400,
         ["backend max lease TTL of 7200 would be less than backend default lease TTL of 10800"]),
        ({"token_type": "batchy"}, 400, ["invalid value for 'token_type'"]),
        # OpenBao 2.7.2 stores a negative lease TTL (and reads it back as -1): vault-differences row 79.
        ({"default_lease_ttl": "-1"}, 400, ["invalid default_lease_ttl: cannot provide negative value '-1'"]),
        ({"max_lease_ttl": -5}, 400, ["invalid max_lease_ttl: cannot provide negative value '-5'"]),
        ({"listing_visibility": "all"}, 400, ["invalid listing_visibility all"]),
        ({"passthrough_request_headers": [1]}, 400, ["passthrough_request_headers must be a list of strings"]),
        ({"description": 1}, 400, ["description must be a string"]),
        ({"force_no_cache": "maybe"}, 400,
         ['Field validation failed: error converting input maybe for field "force_no_cache": '
          "cannot parse as a boolean"]),
        ({"plugin_version": "v1", "default_lease_ttl": "1h"}, 400, ["plugin not found in the catalog: jwt, version=v1.0.0"]),
        ({"plugin_version": "2.x"}, 400, ['version "2.x" is not a valid semantic version: malformed version: 2.x']),
        ({"user_lockout_config": {"lockout_threshold": "3"}}, 400,
         ['tuning of user lockout configuration for auth type "jwt" not allowed']),
        ({"plugin_version": RUNNING_VERSION, "user_lockout_config": {}, "default_lease_ttl": "1h",
          "max_lease_ttl": "2h"}, 204, None),
    ],
    ids=["ok", "bad ttl", "max below default", "token type", "negative default", "negative max", "listing visibility", "header list", "description",
         "boolean", "another plugin version", "no version", "user lockout", "the running version, no lockout"],
)
async def test_tune_is_validated_by_the_declaration(
    client: Client, body: dict[str, Any], status: int, errors: list[str] | None
) -> None:
    before = await (await client.get("/v1/sys/auth/jwt/tune", headers=H)).json()
    resp = await client.post("/v1/sys/auth/jwt//tune", json=body, headers=H)
    assert resp.status == status
    after = await (await client.get("/v1/sys/auth/jwt/tune", headers=H)).json()
    if errors is None:
        assert (after["default_lease_ttl"], after["max_lease_ttl"]) == (3600, 7200)
        assert after["force_no_cache"] is False
    else:
        assert resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["errors"] == errors
        assert after["data"] == before["data"]


async def test_mount_values_openbao_takes_otherwise(client: Client) -> None:
    """vault-differences row 79: a role's spelling ``default`` of the mount's token type is
    ``default-service`` (OpenBao refuses it); ``external_entropy_access`` and a description that
    is no string are refused (OpenBao takes both)."""
    assert (await client.post("/v1/sys/auth/jwt/tune", json={"token_type": "default"}, headers=H)).status == 204
    assert (await (await client.get("/v1/sys/auth/jwt/tune", headers=H)).json())["token_type"] == "default-service"
    for body, error in (({"type": "jwt", "external_entropy_access": True}, "external_entropy_access is not supported"),
                        ({"type": "jwt", "description": 5}, "'description' must be a string")):
        resp = await client.post("/v1/sys/auth/other", json=body, headers=H)
        assert (resp.status, (await resp.json())["errors"]) == (400, [error])
    assert "other/" not in (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]


async def test_sys_replies_keep_their_shape(client: Client) -> None:
    tune = await (await client.get("/v1/sys/auth/jwt/tune", headers=H)).json()
    assert tune["data"]["token_type"] == tune["token_type"] == "default-service"  # copied to the top
    assert tune["mount_type"] == "system"  # Vault's type of its sys/ mount
    created = await (await client.post("/v1/identity/group", json={"name": "shape"}, headers=H)).json()
    assert created["mount_type"] == "identity" and created["data"]["name"] == "shape"
    acl = await (await client.get("/v1/sys/policies/acl/default", headers=H)).json()
    assert acl["data"]["name"] == "default" and "name" not in acl  # not copied
    legacy = await (await client.get("/v1/sys/policy/DEFAULT/", headers=H)).json()
    assert legacy["name"] == legacy["data"]["name"] == "default" and legacy["rules"]
    health = await client.get("/v1/sys/health", headers={"X-Vault-Token": "garbage"})
    assert health.status == 200 and health.headers["Content-Type"] == "application/json"
    assert "data" not in await health.json()  # a bare body, no envelope
    # Unknown parameters are reported, as for mount paths.
    listed = await (await client.get("/v1/sys/auth?colour=blue", headers=H)).json()
    assert listed["warnings"] == ["Endpoint ignored these unrecognized parameters: [colour]"]


@pytest.mark.parametrize(
    ("sent", "status", "stored"),
    [
        (base64.b64encode(b'path "a" { capabilities = ["read"] }').decode(), 204, 'path "a" { capabilities = ["read"] }'),
        ("cGF0aCAiYSIgeyBjYXBh\nYmlsaXRpZXMgPSBbInJlYWQiXSB9", 204, 'path "a" { capabilities = ["read"] }'),
        ('path "a" { capabilities = ["read"] }', 204, 'path "a" { capabilities = ["read"] }'),
        ("cGF0aA", 400, None),  # unpadded: not base64 to Go either, so parsed as HCL (and refused)
        ("abcd", 400, None),  # base64 of three bytes that are no policy
    ],
    ids=["base64", "base64 with a line break", "plain", "unpadded", "garbage"],
)
async def test_a_policy_may_be_sent_in_base64(client: Client, sent: str, status: int, stored: str | None) -> None:
    """Vault's API: the policy "can be base64-encoded to avoid string escaping"."""
    resp = await client.put("/v1/sys/policies/acl/b64", json={"policy": sent}, headers=H)
    assert resp.status == status, await resp.text()
    read = await client.get("/v1/sys/policies/acl/b64", headers=H)
    assert (await read.json())["data"]["policy"] == stored if stored else read.status == 404


async def test_sudo_is_required_and_judged_on_the_canonical_path(client: Client) -> None:
    policy = 'path "sys/auth/*" { capabilities = ["read", "update"] }\npath "sys/policy/*" { capabilities = ["read"] }'
    assert (await client.put("/v1/sys/policies/acl/nosudo", json={"policy": policy}, headers=H)).status == 204
    created = await (await client.post("/v1/auth/token/create", json={"policies": ["nosudo"]}, headers=H)).json()
    token = {"X-Vault-Token": created["auth"]["client_token"]}
    assert (await client.get("/v1/sys/auth/jwt/tune", headers=token)).status == 403
    sudo = policy.replace('"update"]', '"update", "sudo"]')
    assert (await client.put("/v1/sys/policies/acl/nosudo", json={"policy": sudo}, headers=H)).status == 204
    assert (await client.get("/v1/sys/auth//jwt//tune", headers=token)).status == 200


async def test_policy_paths_need_their_capability_and_no_sudo(client: Client) -> None:
    """As in Vault (OpenBao's root paths hold no policy path): a policy-manager policy without
    sudo manages policies, and one without the capability does not (it needed sudo here)."""
    manager = ('path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete", "list"] }\n'
               'path "sys/policies/acl" { capabilities = ["list"] }\npath "sys/policy/*" { capabilities = ["read"] }')
    assert (await client.put("/v1/sys/policies/acl/manager", json={"policy": manager}, headers=H)).status == 204
    created = await (await client.post("/v1/auth/token/create", json={"policies": ["manager"]}, headers=H)).json()
    token = {"X-Vault-Token": created["auth"]["client_token"]}
    body = {"policy": 'path "a" { capabilities = ["read"] }'}
    assert (await client.put("/v1/sys/policies/acl/made", json=body, headers=token)).status == 204
    assert (await client.get("/v1/sys/policies/acl/made", headers=token)).status == 200
    assert (await client.request("LIST", "/v1/sys/policies/acl", headers=token)).status == 200
    assert (await client.get("/v1/sys/policy/made", headers=token)).status == 200
    assert (await client.put("/v1/sys/policy/made", json=body, headers=token)).status == 403  # read only there
    assert (await client.get("/v1/sys/policy", headers=token)).status == 403  # no rule on sys/policy
    assert (await client.delete("/v1/sys/policies/acl/made", headers=token)).status == 204


async def test_head_is_get_without_a_body(client: Client) -> None:
    """HEAD on any path answers as GET would, without the body (RFC 9110: a server that
    supports GET supports HEAD); OpenBao 2.7.2 answers 405 but for ``sys/health``
    (vault-differences row 66)."""
    for path in ("sys/auth", "sys/mounts", "sys/policies/acl/default", "auth/token/lookup-self", "sys/host-info"):
        got = await client.get(f"/v1/{path}", headers=H)
        head = await client.head(f"/v1/{path}", headers=H)
        assert (head.status, head.headers["Content-Type"]) == (got.status, got.headers["Content-Type"]) == (
            200, "application/json"), path
        assert await head.read() == b""
    denied = await client.head("/v1/sys/auth")
    assert denied.status == 403


async def test_no_one_is_locked_out(client: Client) -> None:
    """``sys/locked-users``: Vault locks out users of password methods only; jwt and oidc
    logins never lock anyone out, so the report is empty and an unlock has nothing to do."""
    empty = {"namespace_id": "root", "namespace_path": "", "counts": 0, "mount_accessors": []}
    body = await (await client.get("/v1/sys/locked-users", headers=H)).json()
    assert body["data"] == {"by_namespace": [empty], "total": 0}
    body = await (await client.get("/v1/sys/locked-users?mount_accessor=auth_jwt_1", headers=H)).json()
    assert body["data"]["by_namespace"][0]["mount_accessors"] == [
        {"mount_accessor": "auth_jwt_1", "counts": 0, "alias_identifiers": None}]
    assert (await client.post("/v1/sys/locked-users/auth_jwt_1/unlock/bob", headers=H)).status == 204
    assert (await client.get("/v1/sys/locked-users")).status == 403


@pytest.mark.parametrize(("method", "path", "start"), [
    ("PUT", "sys/seal", "authmount has no seal"),
    ("PUT", "sys/unseal", "authmount has no seal"),
    ("GET", "sys/generate-root/attempt", "authmount has no unseal keys to generate a root token"),
    ("PUT", "sys/generate-root-token/attempt", "authmount has no unseal keys to generate a root token"),
    ("GET", "sys/rekey/init", "authmount has no unseal keys to rekey"),
    ("POST", "sys/rotate/root", "authmount has no unseal keys to rekey"),
])
async def test_vaults_seal_paths_say_what_to_do_instead(client: Client, method: str, path: str, start: str) -> None:
    """``vault operator unseal``, ``generate-root``, ``rekey``: no token needed, the body never
    read (an unseal key sent is not parsed), and the authmount command in the answer."""
    resp = await client.request(method, f"/v1/{path}", data=b'{"key": "not json', headers={"Content-Type": "x"})
    body = await resp.json()
    assert resp.status == 400 and body["errors"][0].startswith(start) and "docs/operations.md" in body["errors"][0]
