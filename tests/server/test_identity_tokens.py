"""Identity tokens (``identity/oidc/*``): named keys, roles, tokens verified offline against
the public key set, rotation, introspection, and the refusals with Vault's texts."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from pytest_aiohttp import AiohttpClient

from plugin.sealing import is_sealed
from server.acl.templating import AliasView, GroupView, IdentityView
from server.app import create_app
from server.appkeys import STORAGE
from server.http.listverb import make_test_server
from server.identity.oidc import _claims_problem
from server.identity.oidc_keys import KEY_PREFIX
from server.identity.token_template import RESERVED_CLAIMS, check_template, fill
from server.settings import Settings, StorageSettings
from tests.server.httpkit import Client, app_of
from tests.server.test_identity import ROOT, Api, _mount

TOKEN_POLICY = 'path "identity/oidc/token/*" { capabilities = ["read"] }'


@pytest.fixture
async def api(aiohttp_client: AiohttpClient) -> Api:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        api_addr="https://authmount.example.com:8200")
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    a = Api(client)
    a.accessor = await _mount(a, "jwt")
    await a.ok("POST", "sys/policies/acl/dev", {"policy": TOKEN_POLICY})
    return a


async def _key_set(api: Api) -> dict[str, Any]:
    resp = await api.client.get("/v1/identity/oidc/.well-known/keys")  # no token
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    out: dict[str, Any] = await resp.json()
    return out


async def _token(api: Api, role: str, token: str) -> dict[str, Any]:
    status, out = await api.call("GET", f"identity/oidc/token/{role}", token=token)
    assert status == 200, out
    data: dict[str, Any] = out["data"]
    return data


async def _stored(api: Api, name: str) -> dict[str, Any]:
    """The named key ``name`` as storage holds it."""
    raw = await app_of(api.client)[STORAGE].get(KEY_PREFIX + name)
    assert isinstance(raw, dict)
    return raw


def _verify(token: str, key_set: dict[str, Any], audience: str) -> dict[str, Any]:
    """The claims of ``token``, verified with PyJWT against the published key set (as a
    service that trusts authmount's identity tokens would)."""
    kid = pyjwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in key_set["keys"] if k["kid"] == kid]
    key = pyjwt.PyJWK(jwk)
    claims: dict[str, Any] = pyjwt.decode(token, key, algorithms=[jwk["alg"]], audience=audience,
                                          issuer="https://authmount.example.com:8200/v1/identity/oidc")
    return claims


async def test_a_login_gets_an_identity_token_that_verifies_offline(api: Api) -> None:
    await api.group("ops", [], "ops-idp")
    template = ('{"who": {{identity.entity.name}}, "groups": {{identity.entity.groups.names}}, '
                f'"user": {{{{identity.entity.aliases.{api.accessor}.name}}}}, "nbf": {{{{time.now}}}}}}')
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default", "ttl": "1h", "template": template})
    role = (await api.ok("GET", "identity/oidc/role/ci"))["data"]
    assert set(role) == {"client_id", "key", "template", "ttl"}
    assert (role["key"], role["template"], role["ttl"]) == ("default", template, 3600)
    assert len(role["client_id"]) == 26 and role["client_id"].isalnum()
    auth = await api.login("alice", ["ops-idp"])
    before = int(time.time())
    data = await _token(api, "ci", auth["client_token"])
    assert (data["client_id"], data["ttl"]) == (role["client_id"], 3600)
    claims = _verify(data["token"], await _key_set(api), role["client_id"])
    entity = (await api.ok("GET", f"identity/entity/id/{auth['entity_id']}"))["data"]
    assert claims["sub"] == auth["entity_id"] and claims["namespace"] == "root"
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - before) <= 2
    assert (claims["who"], claims["groups"], claims["user"]) == (entity["name"], ["ops"], "alice")
    assert claims["nbf"] == claims["iat"]
    # the default key was made for the role: RS256, 24h, every role may use it, never deleted
    key = (await api.ok("GET", "identity/oidc/key/default"))["data"]
    assert key == {"algorithm": "RS256", "allowed_client_ids": ["*"], "rotation_period": 86400,
                   "verification_ttl": 86400}
    status, out = await api.call("DELETE", "identity/oidc/key/default")
    assert (status, out["errors"]) == (400, ['deletion of key "default" not allowed'])


async def test_discovery_document(api: Api) -> None:
    resp = await api.client.get("/v1/identity/oidc/.well-known/openid-configuration")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "max-age=3600"
    assert await resp.json() == {
        "issuer": "https://authmount.example.com:8200/v1/identity/oidc",
        "jwks_uri": "https://authmount.example.com:8200/v1/identity/oidc/.well-known/keys",
        "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"],
    }
    assert await _key_set(api) == {"keys": []}  # no role: nothing published
    await api.ok("POST", "identity/oidc/config", {"issuer": "https://id.example.com"})
    assert (await api.ok("GET", "identity/oidc/config"))["data"] == {"issuer": "https://id.example.com"}
    resp = await api.client.get("/v1/identity/oidc/.well-known/openid-configuration")
    assert (await resp.json())["issuer"] == "https://id.example.com/v1/identity/oidc"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"])
async def test_every_algorithm_signs_what_pyjwt_verifies(api: Api, alg: str) -> None:
    await api.ok("POST", "identity/oidc/key/k", {"algorithm": alg, "allowed_client_ids": "ci-client"})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "k", "client_id": "ci-client"})
    auth = await api.login("alice", [])
    data = await _token(api, "ci", auth["client_token"])
    assert pyjwt.get_unverified_header(data["token"])["alg"] == alg
    assert _verify(data["token"], await _key_set(api), "ci-client")["sub"] == auth["entity_id"]


async def test_rotation_keeps_old_tokens_verifiable_for_the_verification_ttl(api: Api) -> None:
    await api.ok("POST", "identity/oidc/key/k", {"allowed_client_ids": "*", "verification_ttl": "2h"})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "k", "ttl": "1h"})
    client_id = (await api.ok("GET", "identity/oidc/role/ci"))["data"]["client_id"]
    token = (await api.login("alice", []))["client_token"]
    first = await _token(api, "ci", token)
    published = {k["kid"] for k in (await _key_set(api))["keys"]}
    assert len(published) == 2  # the signing key and the next one, published ahead
    first_kid = pyjwt.get_unverified_header(first["token"])["kid"]
    await api.ok("POST", "identity/oidc/key/k/rotate")
    second = await _token(api, "ci", token)
    second_kid = pyjwt.get_unverified_header(second["token"])["kid"]
    assert second_kid != first_kid and second_kid in published  # the published next key signs now
    after = await _key_set(api)
    assert {k["kid"] for k in after["keys"]} >= published and len(after["keys"]) == 3
    for data in (first, second):
        _verify(data["token"], after, client_id)
    # a rotation that lets the old key go at once
    await api.ok("POST", "identity/oidc/key/k/rotate", {"verification_ttl": 0})
    kids = {k["kid"] for k in (await _key_set(api))["keys"]}
    assert second_kid not in kids and first_kid in kids and len(kids) == 3


async def test_a_due_key_rotates_at_its_next_use(api: Api) -> None:
    await api.ok("POST", "identity/oidc/key/k", {"allowed_client_ids": "*", "rotation_period": "1m",
                                                 "verification_ttl": "5m"})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "k", "ttl": "5m"})
    token = (await api.login("alice", []))["client_token"]
    storage = app_of(api.client)[STORAGE]
    stored = await _stored(api, "k")
    first_kid = pyjwt.get_unverified_header((await _token(api, "ci", token))["token"])["kid"]
    assert first_kid == stored["signing"]["kid"]
    await storage.put(KEY_PREFIX + "k", {**stored, "next_rotation": time.time() - 1})
    kid = pyjwt.get_unverified_header((await _token(api, "ci", token))["token"])["kid"]
    assert kid == stored["next"]["kid"]
    rotated = await _stored(api, "k")
    assert rotated["next_rotation"] > time.time() + 50 and rotated["next"]["kid"] not in (first_kid, kid)


async def test_private_keys_are_sealed_at_rest_and_resealed_by_sys_rotate(api: Api) -> None:
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default"})
    stored = await _stored(api, "default")
    text = json.dumps(stored)
    assert "PRIVATE KEY" not in text and '"d":' not in text
    assert all(is_sealed(pair["private_key"]) for pair in (stored["signing"], stored["next"]))
    await api.ok("POST", "sys/rotate")
    resealed = await _stored(api, "default")
    assert resealed["signing"]["private_key"] != stored["signing"]["private_key"]
    assert resealed["signing"]["kid"] == stored["signing"]["kid"]
    auth = await api.login("alice", [])
    data = await _token(api, "ci", auth["client_token"])
    _verify(data["token"], await _key_set(api), data["client_id"])


async def test_introspection(api: Api) -> None:
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default", "client_id": "svc"})
    auth = await api.login("alice", [])
    token = (await _token(api, "ci", auth["client_token"]))["token"]

    async def introspect(body: dict[str, Any]) -> dict[str, Any]:
        resp = await api.client.post("/v1/identity/oidc/introspect", json=body, headers={"X-Vault-Token": ROOT})
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        out: dict[str, Any] = await resp.json()
        return out

    assert await introspect({"token": token}) == {"active": True}
    assert await introspect({"token": token, "client_id": "svc"}) == {"active": True}
    assert await introspect({"token": token, "client_id": "other"}) == {
        "active": False, "error": "error validating claims: invalid audience claim (aud)"}
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    assert await introspect({"token": forged}) == {"active": False, "error": "unable to validate the token signature"}
    assert (await introspect({"token": "not-a-jwt"}))["error"].startswith("error parsing token: token must have 3")
    await api.ok("POST", f"identity/entity/id/{auth['entity_id']}", {"disabled": True})
    assert await introspect({"token": token}) == {"active": False, "error": "entity is disabled"}
    await api.ok("DELETE", f"identity/entity/id/{auth['entity_id']}")
    assert await introspect({"token": token}) == {"active": False, "error": "entity was not found"}


@pytest.mark.parametrize(("claims", "problem"), [
    ({"iss": "i", "exp": 1000, "iat": 900}, ""),
    ({"iss": "j", "exp": 1000}, "invalid issuer claim (iss)"),
    ({"iss": "i", "exp": 900}, "token is expired (exp)"),
    ({"iss": "i", "exp": 950}, ""),  # a minute of leeway
    ({"iss": "i", "nbf": 1100}, "token not valid yet (nbf)"),
    ({"iss": "i", "iat": 1100}, "token issued in the future (iat)"),
    ({"iss": "i", "exp": "1000"}, "invalid exp claim: not a number"),
    ({"iss": "i", "exp": True}, "invalid exp claim: not a number"),
    ({"iss": "i", "aud": ["a", "svc"]}, ""),
    ({"iss": "i", "aud": "a"}, "invalid audience claim (aud)"),
])
def test_claim_checks(claims: dict[str, Any], problem: str) -> None:
    assert _claims_problem(claims, "i", "svc" if "aud" in claims else "", 1000.0) == problem


async def test_tokens_need_an_entity_a_policy_and_an_allowed_client(api: Api) -> None:
    await api.ok("POST", "identity/oidc/key/k", {"allowed_client_ids": "someone-else"})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "k", "client_id": "ci-client"})
    await api.ok("POST", "identity/oidc/role/open", {"key": "default"})
    status, out = await api.call("GET", "identity/oidc/token/open")  # the root token has no entity
    assert (status, out["errors"]) == (400, ["no entity associated with the request's token"])
    token = (await api.login("alice", []))["client_token"]
    status, out = await api.call("GET", "identity/oidc/token/ci", token=token)
    assert (status, out["errors"]) == (
        400, ['the key "k" does not list the client ID of the role "ci" as an allowed client ID'])
    status, out = await api.call("GET", "identity/oidc/token/nope", token=token)
    assert (status, out["errors"]) == (400, ['role "nope" not found'])
    await api.ok("POST", "sys/policies/acl/dev", {"policy": 'path "identity/oidc/token/ci" { capabilities = ["read"] }'})
    assert (await api.call("GET", "identity/oidc/token/open", token=token))[0] == 403
    await api.ok("POST", "identity/oidc/key/k", {"allowed_client_ids": "ci-client"})
    assert (await _token(api, "ci", token))["client_id"] == "ci-client"


@pytest.mark.parametrize(("path", "body", "message"), [
    ("identity/oidc/key/k", {"rotation_period": "59s"}, "rotation_period must be at least one minute"),
    ("identity/oidc/key/k", {"rotation_period": "1m", "verification_ttl": "11m"},
     "verification_ttl cannot be longer than 10x rotation_period"),
    ("identity/oidc/key/k", {"algorithm": "HS256"}, 'unknown signing algorithm "HS256"'),
    ("identity/oidc/key/k", {"algorithm": "none"}, 'unknown signing algorithm "none"'),
    ("identity/oidc/key/nope/rotate", {}, 'no named key found at "nope"'),
    ("identity/oidc/role/r", {}, "the key parameter is required"),
    ("identity/oidc/role/r", {"key": "nope"}, 'cannot find key "nope"'),
    ("identity/oidc/role/r", {"key": "a\x00b"}, 'cannot find key "a\x00b"'),  # a 500 before: no key holds a NUL
    ("identity/oidc/role/r", {"key": "default", "ttl": "25h"},
     "a role's token ttl cannot be longer than the verification_ttl of the key it references"),
    ("identity/oidc/role/r", {"key": "default", "template": '{"sub": "x"}'},
     'top level key "sub" not allowed. Restricted keys: ' + ", ".join(RESERVED_CLAIMS)),
    ("identity/oidc/role/r", {"key": "default", "template": "[1]"},
     "error parsing template JSON: the template must be a JSON object"),
    ("identity/oidc/role/r", {"key": "default", "template": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"},
     "error parsing template JSON: nested deeper than 64 levels"),
    ("identity/oidc/role/r", {"key": "default", "template": '{"a": {{identity.entity.id}'},
     "error parsing template: unbalanced templating characters"),
    ("identity/oidc/role/r", {"key": "default", "template": '{"a": {{identity.entity.nope}}}'},
     'error parsing template: unknown template "identity.entity.nope"'),
    ("identity/oidc/role/r", {"key": "default", "template": '{"a": {{identity.groups.names.ops.id}}}'},
     'error parsing template: the directive "identity.groups.names.ops.id" is not supported'),
    # a list or object in a JSON string: "[]" and "{}" while empty, broken JSON with a value (OpenBao then
    # logs and issues tokens without any of the template's claims)
    *(("identity/oidc/role/r", {"key": "default", "template": '{"a": "{{identity.entity.' + d + '}}"}'},
       "error parsing template JSON: Expecting ',' delimiter: line 1 column 10 (char 9) (with a value in every "
       "directive: a list or an object") for d in ("groups.names", "groups.ids", "metadata", "aliases.auth_x.metadata",
                                                   "aliases.auth_x.custom_metadata")),
    ("identity/oidc/config", {"issuer": "https://id.example.com/path"}, "invalid issuer, which must include only"),
    ("identity/oidc/config", {"issuer": "ftp://id.example.com"}, "invalid issuer, which must include only"),
])
async def test_refusals(api: Api, path: str, body: dict[str, Any], message: str) -> None:
    status, out = await api.call("POST", path, body)
    assert status == 400 and out["errors"][0].startswith(message), out
    assert (await api.call("GET", "identity/oidc/role/r"))[0] == 404


async def test_keys_in_use_are_not_deleted_and_lists(api: Api) -> None:
    await api.ok("POST", "identity/oidc/key/k", {})
    await api.ok("POST", "identity/oidc/role/b", {"key": "k", "ttl": "1h"})
    await api.ok("POST", "identity/oidc/role/a", {"key": "k", "ttl": "1h"})
    status, out = await api.call("DELETE", "identity/oidc/key/k")
    assert (status, out["errors"]) == (400, ['unable to delete key "k" because it is currently referenced by these '
                                             "roles: a, b"])
    status, out = await api.call("POST", "identity/oidc/key/k", {"verification_ttl": "30m"})
    assert (status, out["errors"]) == (400, ['unable to update key "k" because it is currently referenced by one or '
                                             "more roles with a token ttl greater than 1800 seconds"])
    assert (await api.ok("LIST", "identity/oidc/key"))["data"]["keys"] == ["k"]
    assert (await api.ok("LIST", "identity/oidc/role"))["data"]["keys"] == ["a", "b"]
    for role in ("a", "b"):
        await api.ok("DELETE", f"identity/oidc/role/{role}")
    await api.ok("DELETE", "identity/oidc/key/k")
    assert (await api.call("GET", "identity/oidc/key/k"))[0] == 404
    assert (await api.call("LIST", "identity/oidc/key"))[0] == 404


async def test_an_algorithm_change_makes_new_keys_and_keeps_the_old_ones_verifying(api: Api) -> None:
    await api.ok("POST", "identity/oidc/key/k", {"allowed_client_ids": "*"})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "k", "client_id": "c"})
    token = (await api.login("alice", []))["client_token"]
    old = await _token(api, "ci", token)
    await api.ok("POST", "identity/oidc/key/k", {"algorithm": "ES256"})
    new = await _token(api, "ci", token)
    assert pyjwt.get_unverified_header(new["token"])["alg"] == "ES256"
    key_set = await _key_set(api)
    assert sorted(k["kty"] for k in key_set["keys"]) == ["EC", "EC", "RSA", "RSA"]
    for data in (old, new):
        _verify(data["token"], key_set, "c")


def test_template_fills_every_directive_as_json() -> None:
    who = IdentityView("e1", 'na"me', (("team", "a\nb"),),
                       (("acc", AliasView("al1", "alice", (("m", "1"),), (("c", "2"),))),), (GroupView("g1", "ops"),))
    template = ('{"id": {{identity.entity.id}}, "name": {{ identity.entity.name }}, "md": {{identity.entity.metadata}}, '
                '"team": {{identity.entity.metadata.team}}, "none": {{identity.entity.metadata.none}}, '
                '"ids": {{identity.entity.groups.ids}}, "alias": {{identity.entity.aliases.acc.name}}, '
                '"aid": {{identity.entity.aliases.acc.id}}, "am": {{identity.entity.aliases.acc.metadata}}, '
                '"ac": {{identity.entity.aliases.acc.custom_metadata.c}}, '
                '"other": {{identity.entity.aliases.other.name}}, "in": {{time.now.plus.1h}}, '
                '"ago": {{time.now.minus.30s}}}')
    assert fill(template, who, 1000) == {
        "id": "e1", "name": 'na"me', "md": {"team": "a\nb"}, "team": "a\nb", "none": "", "ids": ["g1"],
        "alias": "alice", "aid": "al1", "am": {"m": "1"}, "ac": "2", "other": "", "in": 4600, "ago": 970}
    encoded = base64.b64encode(b'{"a": {{identity.entity.id}}}').decode()
    assert check_template(encoded) == '{"a": {{identity.entity.id}}}'


async def test_identity_tokens_never_reach_the_audit_log_in_clear(api: Api, tmp_path: Path) -> None:
    """The audit log holds the HMAC of a token it answers or is sent to introspect, never
    the JWT (nor its signature, which alone would let no one forge it, but is the token's)."""
    log = tmp_path / "audit.log"
    await api.ok("POST", "sys/audit/file", {"type": "file", "options": {"file_path": str(log)}})
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default", "client_id": "svc"})
    auth = await api.login("alice", [])
    token = (await _token(api, "ci", auth["client_token"]))["token"]
    resp = await api.client.post("/v1/identity/oidc/introspect", json={"token": token}, headers={"X-Vault-Token": ROOT})
    assert (await resp.json()) == {"active": True}
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    issued = [e for e in entries if e["type"] == "response" and e["request"]["path"] == "identity/oidc/token/ci"]
    assert issued and issued[0]["response"]["data"]["token"].startswith("hmac-sha256:")
    sent = [e for e in entries if e["type"] == "request" and e["request"]["path"] == "identity/oidc/introspect"]
    assert sent and sent[0]["request"]["data"]["token"].startswith("hmac-sha256:")
    assert token.split(".")[2] not in text and token.split(".")[1] not in text


async def test_a_batch_token_gets_an_identity_token_of_its_entity(api: Api) -> None:
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default", "client_id": "svc"})
    auth = await api.login("alice", [], role="batch")
    assert auth["client_token"].startswith("hvb.") and auth["entity_id"]
    data = await _token(api, "ci", auth["client_token"])
    assert _verify(data["token"], await _key_set(api), "svc")["sub"] == auth["entity_id"]
