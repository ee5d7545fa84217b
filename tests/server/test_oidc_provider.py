"""The OIDC provider (``identity/oidc/scope|assignment|client|provider`` and the authorization
code flow): objects with Vault's defaults and refusals, authorize, the token endpoint with
both client authentications and PKCE, userinfo, discovery and keys; ID tokens verified with
PyJWT against the published keys, as a relying party verifies them."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt as pyjwt
import pytest
from pytest_aiohttp import AiohttpClient

from plugin.sealing import is_sealed
from server.app import create_app
from server.appkeys import STORAGE
from server.http.listverb import make_test_server
from server.identity.provider_flow import USED_CODE_PREFIX, hash_claim, redirect_allowed
from server.settings import RateLimitSettings, Settings, StorageSettings
from tests.server.httpkit import Client, app_of
from tests.server.test_identity import ROOT, Api, _mount

ISSUER = "https://authmount.example.com:8200/v1/identity/oidc/provider/"
REDIRECT = "https://app.example.com/callback"
VERIFIER = "43_char_min_abcdefghijklmnopqrstuvwxyzabcde"
CHALLENGE = "hMn-5TBH-t3uN00FEaGsQtYPhyC4Otbx-9vDcPTYHmc"  # Vault's test pair (S256)


class Provider(Api):
    """The API helper with the flow's three calls."""

    async def client_of(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = (await self.ok("GET", f"identity/oidc/client/{name}"))["data"]
        return data

    async def authorize(self, token: str, params: dict[str, Any], *, provider: str = "default",
                        post: bool = False) -> tuple[int, dict[str, Any]]:
        path = f"/v1/identity/oidc/provider/{provider}/authorize"
        headers = {"X-Vault-Token": token}
        if post:
            resp = await self.client.post(path, json=params, headers=headers)
        else:
            resp = await self.client.get(path + "?" + urlencode(params), headers=headers)
        assert resp.headers["Content-Type"] == "application/json"
        return resp.status, json.loads(await resp.read())

    async def exchange(self, form: dict[str, Any], *, provider: str = "default",
                       basic: tuple[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        resp = await self.client.post(f"/v1/identity/oidc/provider/{provider}/token", data=urlencode(form),
                                      headers=headers)
        return resp.status, json.loads(await resp.read()), resp.headers

    async def sign_in(self, token: str, app: dict[str, Any], scope: str = "openid") -> dict[str, Any]:
        """``authorize`` with ``token``, then the code exchanged by ``app`` (client_secret_basic):
        the token endpoint's answer."""
        status, out = await self.authorize(token, {"client_id": app["client_id"], "scope": scope,
                                                   "redirect_uri": REDIRECT, "response_type": "code"})
        assert status == 200, out
        status, tokens, _ = await self.exchange({"grant_type": "authorization_code", "code": out["code"],
                                                 "redirect_uri": REDIRECT}, basic=(app["client_id"],
                                                                                   app["client_secret"]))
        assert status == 200, tokens
        return tokens

    async def userinfo(self, access_token: str, *, provider: str = "default") -> tuple[int, dict[str, Any], Any]:
        resp = await self.client.get(f"/v1/identity/oidc/provider/{provider}/userinfo",
                                     headers={"Authorization": "Bearer " + access_token})
        return resp.status, json.loads(await resp.read()), resp.headers

    async def keys(self, provider: str = "default") -> dict[str, Any]:
        resp = await self.client.get(f"/v1/identity/oidc/provider/{provider}/.well-known/keys")
        assert resp.status == 200
        out: dict[str, Any] = await resp.json()
        return out


@pytest.fixture
async def api(aiohttp_client: AiohttpClient) -> Provider:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        api_addr="https://authmount.example.com:8200")
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    a = Provider(client)
    a.accessor = await _mount(a, "jwt")
    return a


def _verify(id_token: str, key_set: dict[str, Any], audience: str, provider: str = "default") -> dict[str, Any]:
    kid = pyjwt.get_unverified_header(id_token)["kid"]
    [jwk] = [k for k in key_set["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = pyjwt.decode(id_token, pyjwt.PyJWK(jwk), algorithms=[jwk["alg"]], audience=audience,
                                          issuer=ISSUER + provider)
    return claims


async def _app(api: Provider, **extra: Any) -> dict[str, Any]:
    await api.ok("POST", "identity/oidc/client/app", {"redirect_uris": REDIRECT, "assignments": "allow_all", **extra})
    return await api.client_of("app")


async def test_a_confidential_client_signs_a_user_in(api: Provider) -> None:
    await api.ok("POST", "sys/policies/acl/clients", {"policy": 'path "identity/oidc/client/*" { capabilities = '
                                                                '["read"] }'})
    group_id = await api.group("ops", ["clients"], "ops-idp")
    await api.ok("POST", "identity/oidc/scope/groups", {"template": '{"groups": {{identity.entity.groups.names}}}',
                                                        "description": "groups"})
    await api.ok("POST", "identity/oidc/scope/user", {
        "template": base64.b64encode(f'{{"username": {{{{identity.entity.aliases.{api.accessor}.name}}}}}}'
                                     .encode()).decode()})
    await api.ok("POST", "identity/oidc/assignment/ops", {"group_ids": [group_id.upper()]})
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "groups,user"})
    app = await _app(api, assignments="ops", id_token_ttl="30m", access_token_ttl="10m")
    assert len(app["client_id"]) == 32 and app["client_id"].isalnum()
    assert app["client_secret"].startswith("hvo_secret_") and len(app["client_secret"]) == 75
    assert {k: v for k, v in app.items() if k not in ("client_id", "client_secret")} == {
        "redirect_uris": [REDIRECT], "assignments": ["ops"], "key": "default", "id_token_ttl": 1800,
        "access_token_ttl": 600, "client_type": "confidential", "authorization_code": True, "client_credentials": False}
    auth = await api.login("alice", ["ops-idp"])
    status, out = await api.authorize(auth["client_token"], {
        "client_id": app["client_id"], "scope": "openid groups user unknown", "redirect_uri": REDIRECT,
        "response_type": "code", "state": "st-1", "nonce": "n-1", "max_age": 600})
    assert status == 200 and set(out) == {"code", "state"} and out["state"] == "st-1"
    code = out["code"]
    before = int(time.time())
    status, tokens, headers = await api.exchange({"grant_type": "authorization_code", "code": code,
                                                  "redirect_uri": REDIRECT}, basic=(app["client_id"],
                                                                                    app["client_secret"]))
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    assert set(tokens) == {"access_token", "expires_in", "id_token", "token_type"}
    assert (tokens["token_type"], tokens["expires_in"]) == ("Bearer", 600)
    claims = _verify(tokens["id_token"], await api.keys(), app["client_id"])
    assert claims["sub"] == auth["entity_id"] and claims["namespace"] == "root" and claims["nonce"] == "n-1"
    assert claims["exp"] - claims["iat"] == 1800 and abs(claims["iat"] - before) <= 2
    assert abs(claims["auth_time"] - before) <= 2
    assert (claims["groups"], claims["username"]) == (["ops"], "alice")
    assert claims["at_hash"] == hash_claim(tokens["access_token"], "RS256")
    assert claims["c_hash"] == hash_claim(code, "RS256")
    status, info, _ = await api.userinfo(tokens["access_token"])
    assert (status, info) == (200, {"sub": auth["entity_id"], "groups": ["ops"], "username": "alice"})
    # the code is used up, and the access token is good for nothing else
    status, again, _ = await api.exchange({"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": REDIRECT, "client_id": app["client_id"],
                                           "client_secret": app["client_secret"]})
    assert (status, again) == (400, {"error": "invalid_grant",
                                     "error_description": "authorization grant is invalid or expired"})
    # the entity's group grants its login token a read of the client; the access token gets nothing
    assert (await api.call("GET", "identity/oidc/client/app", token=auth["client_token"]))[0] == 200
    for method, path in (("GET", "auth/token/lookup-self"), ("GET", "identity/oidc/client/app")):
        status, _ = await api.call(method, path, token=tokens["access_token"])
        assert status == 403, path


async def test_client_secrets_are_sealed_again_by_a_rotation(api: Provider) -> None:
    app = await _app(api)
    storage = app_of(api.client)[STORAGE]
    before = await storage.get("identity/oidc/client/app")
    assert isinstance(before, dict) and is_sealed(before["client_secret"]) and app["client_secret"] not in str(before)
    await api.ok("POST", "sys/rotate")
    after = await storage.get("identity/oidc/client/app")
    assert isinstance(after, dict) and after["client_secret"] != before["client_secret"]
    assert (await api.client_of("app"))["client_secret"] == app["client_secret"]


async def test_a_public_client_needs_pkce(api: Provider) -> None:
    app = await _app(api, client_type="public")
    assert "client_secret" not in app
    auth = await api.login("bob", [])
    base = {"client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code"}
    status, out = await api.authorize(auth["client_token"], base)
    assert (status, out) == (400, {"error": "invalid_request", "error_description": "PKCE is required for public "
                                                                                    "clients", "state": ""})
    status, out = await api.authorize(auth["client_token"], {**base, "code_challenge": CHALLENGE,
                                                             "code_challenge_method": "S256"}, post=True)
    assert status == 200
    form = {"grant_type": "authorization_code", "code": out["code"], "redirect_uri": REDIRECT,
            "client_id": app["client_id"]}
    status, err, _ = await api.exchange(form)
    assert (status, err["error_description"]) == (400, "expected code_verifier for token exchange")
    # that failure used the code up, as in Vault
    status, err, _ = await api.exchange({**form, "code_verifier": VERIFIER})
    assert (status, err["error"]) == (400, "invalid_grant")
    status, out = await api.authorize(auth["client_token"], {**base, "code_challenge": CHALLENGE,
                                                             "code_challenge_method": "S256"})
    status, tokens, _ = await api.exchange({**form, "code": out["code"], "code_verifier": VERIFIER})
    assert status == 200, tokens
    assert _verify(tokens["id_token"], await api.keys(), app["client_id"])["sub"] == auth["entity_id"]


@pytest.mark.parametrize(("change", "error", "description"), [
    ({"client_id": ""}, "invalid_client_id", "client_id parameter is required"),
    ({"client_id": "nope"}, "invalid_client_id", "client with client_id not found"),
    ({"redirect_uri": ""}, "invalid_request", "redirect_uri parameter is required"),
    ({"redirect_uri": "https://evil.example.com/callback"}, "invalid_redirect_uri",
     "redirect_uri is not allowed for the client"),
    ({"scope": "profile"}, "invalid_request", 'scope parameter must contain the "openid" value'),
    ({"response_type": ""}, "invalid_request", "response_type parameter is required"),
    ({"response_type": "token"}, "unsupported_response_type", "unsupported response_type value"),
    ({"code_challenge": "short"}, "invalid_request", "invalid code_challenge"),
    ({"code_challenge": CHALLENGE, "code_challenge_method": "S512"}, "invalid_request",
     "invalid code_challenge_method"),
    ({"max_age": 0}, "invalid_request", "max_age must be greater than zero"),
    ({"nonce": "n" * 1025}, "invalid_request", "nonce parameter is longer than 1024 characters"),
])
async def test_authorize_refusals(api: Provider, change: dict[str, Any], error: str, description: str) -> None:
    app = await _app(api)
    auth = await api.login("carol", [])
    params = {"client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code",
              "state": "s", **change}
    status, out = await api.authorize(auth["client_token"], params)
    assert (status, out) == (400, {"error": error, "error_description": description, "state": "s"})


async def test_authorize_needs_an_entity_the_client_admits(api: Provider) -> None:
    await api.ok("POST", "identity/oidc/assignment/none", {"entity_ids": "someone-else"})
    app = await _app(api, assignments="none")
    params = {"client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code"}
    status, out = await api.authorize(ROOT, params)
    assert (status, out["error_description"]) == (400, "identity entity must be associated with the request")
    auth = await api.login("dave", [])
    status, out = await api.authorize(auth["client_token"], params)
    assert (status, out["error"], out["error_description"]) == (
        400, "access_denied", "identity entity not authorized by client assignment")
    # a provider that does not serve the client
    await api.ok("POST", "identity/oidc/provider/narrow", {"allowed_client_ids": "other"})
    status, out = await api.authorize(auth["client_token"], params, provider="narrow")
    assert (out["error"], out["error_description"]) == ("unauthorized_client",
                                                       "client is not authorized to use the provider")
    status, out = await api.authorize(auth["client_token"], {**params, "request": "x"})
    assert (out["error"], out["state"]) == ("request_not_supported", "")


async def test_token_endpoint_refusals(api: Provider) -> None:
    app = await _app(api)
    auth = await api.login("erin", [])
    params = {"client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code"}
    creds = (app["client_id"], app["client_secret"])

    async def code() -> str:
        status, out = await api.authorize(auth["client_token"], params)
        assert status == 200
        return str(out["code"])

    form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
    status, err, headers = await api.exchange({**form, "code": await code()}, basic=(app["client_id"], "wrong"))
    assert (status, err) == (401, {"error": "invalid_client", "error_description": "client failed to authenticate"})
    assert headers["WWW-Authenticate"] == "Basic"
    status, err, _ = await api.exchange({**form, "code": "x"}, basic=("", app["client_secret"]))  # Vault: 500
    assert (status, err["error"]) == (401, "invalid_client")  # docs/vault-differences.md row 70
    status, err, _ = await api.exchange({**form, "code": "x"})
    assert (status, err["error_description"]) == (400, "client_id parameter is required")
    status, err, _ = await api.exchange({"code": "x"}, basic=creds)
    assert (status, err["error"]) == (400, "unsupported_grant_type")
    status, err, _ = await api.exchange(form, basic=creds)
    assert err["error_description"] == "code parameter is required"
    for forged in ("x", "1." + "A" * 200, "9" * 9000, "1.é€", "am1.x", "1." + "A" * 8000):
        status, err, _ = await api.exchange({**form, "code": forged}, basic=creds)
        assert (status, err["error"]) == (400, "invalid_grant"), forged
    status, err, _ = await api.exchange({**form, "code": await code(), "redirect_uri": REDIRECT + "/x"}, basic=creds)
    assert err["error_description"] == "redirect_uri does not match the redirect_uri used in the authorization request"
    status, err, _ = await api.exchange({**form, "code": await code(), "code_verifier": VERIFIER}, basic=creds)
    assert err["error_description"] == "unexpected code_verifier for token exchange"
    # another provider's code, and a key that does not allow the client
    await api.ok("POST", "identity/oidc/provider/other", {"allowed_client_ids": "*"})
    status, err, _ = await api.exchange({**form, "code": await code()}, basic=creds, provider="other")
    assert err["error_description"] == "authorization code was not issued by the provider"
    await api.ok("POST", "identity/oidc/key/narrow", {"allowed_client_ids": "someone"})
    await api.ok("POST", "identity/oidc/client/narrow", {"redirect_uris": REDIRECT, "assignments": "allow_all",
                                                         "key": "narrow"})
    narrow = await api.client_of("narrow")
    status, out = await api.authorize(auth["client_token"], {**params, "client_id": narrow["client_id"]})
    status, err, _ = await api.exchange({**form, "code": out["code"]},
                                        basic=(narrow["client_id"], narrow["client_secret"]))
    assert (status, err["error_description"]) == (401, "client is not authorized to use the key")
    # every redeemed code left a record named by its expiry, which the sweep removes later
    used = await app_of(api.client)[STORAGE].list(USED_CODE_PREFIX)
    assert used and all(n[:10].isdigit() for n in used)


async def test_userinfo_refusals(api: Provider) -> None:
    status, err, headers = await api.userinfo("hvs.nothing")
    assert (status, err["error"]) == (401, "invalid_token")
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token",error_description="access token is expired"'
    auth = await api.login("frank", [])
    status, err, _ = await api.userinfo(auth["client_token"])  # a login's token is no access token
    assert (status, err["error_description"]) == (401, "access token is malformed or invalid")
    resp = await api.client.get("/v1/identity/oidc/provider/default/userinfo",
                                headers={"X-Vault-Token": auth["client_token"]})
    assert (resp.status, (await resp.json())["error_description"]) == (
        401, "access token must be sent as a Bearer token")
    status, err, _ = await api.userinfo("x", provider="missing")
    assert (status, err["error_description"]) == (400, "provider not found")


async def test_objects_defaults_and_refusals(api: Provider) -> None:
    assert (await api.ok("GET", "identity/oidc/provider/default"))["data"] == {
        "issuer": ISSUER + "default", "allowed_client_ids": ["*"], "scopes_supported": []}
    assert (await api.ok("GET", "identity/oidc/assignment/allow_all"))["data"] == {
        "entity_ids": ["*"], "group_ids": ["*"]}
    refusals = [
        ("POST", "identity/oidc/assignment/allow_all", {"entity_ids": "x"},
         'modification of assignment "allow_all" not allowed'),
        ("DELETE", "identity/oidc/assignment/allow_all", None, 'deletion of assignment "allow_all" not allowed'),
        ("POST", "identity/oidc/scope/openid", {}, 'the "openid" scope name is reserved'),
        ("DELETE", "identity/oidc/provider/default", None, 'deletion of OIDC provider "default" not allowed'),
        ("POST", "identity/oidc/client/c", {"assignments": "nope"}, 'assignment "nope" does not exist'),
        ("POST", "identity/oidc/client/c", {"assignments": "a\x00"}, 'assignment "a\x00" does not exist'),  # a 500 before
        ("POST", "identity/oidc/client/c", {"key": "nope"}, 'key "nope" does not exist'),
        ("POST", "identity/oidc/client/c", {"client_type": "other"}, 'invalid client_type "other"'),
        ("POST", "identity/oidc/client/c", {"id_token_ttl": "48h"},
         "a client's id_token_ttl cannot be greater than the verification_ttl of the key it references"),
        ("POST", "identity/oidc/provider/p", {"scopes_supported": "nope"}, 'scope "nope" does not exist'),
        ("POST", "identity/oidc/provider/p", {"scopes_supported": "a\x00b"}, 'scope "a\x00b" does not exist'),
        ("POST", "identity/oidc/provider/p", {"issuer": "https://x.example.com/path"},
         "invalid issuer, which must include only a scheme, host, and optional port (e.g. https://example.com:8200)"),
        ("POST", "identity/oidc/scope/s", {"template": '{"aud": "x"}'}, None),
    ]
    for method, path, body, text in refusals:
        status, out = await api.call(method, path, body)
        assert status == 400, (path, out)
        if text is not None:
            assert out["errors"] == [text], path
    await api.ok("POST", "identity/oidc/scope/s", {"template": '{"team": "a"}'})
    await api.ok("POST", "identity/oidc/scope/t", {"template": '{"team": "b"}'})
    status, out = await api.call("POST", "identity/oidc/provider/p", {"scopes_supported": "s,t",
                                                                     "issuer": "https://id.example.com"})
    assert status == 200 and len(out["warnings"]) == 2 and 'conflict "team" in scopes "t", "s"' in out["warnings"][1]
    status, out = await api.call("DELETE", "identity/oidc/scope/s")
    assert out["errors"] == ['unable to delete scope "s" because it is currently referenced by these providers: p']
    await api.ok("POST", "identity/oidc/assignment/a", {"entity_ids": " B , a,a", "group_ids": []})
    assert (await api.ok("GET", "identity/oidc/assignment/a"))["data"] == {"entity_ids": ["a", "b"], "group_ids": []}
    await api.ok("POST", "identity/oidc/key/k", {})
    await _app(api, assignments="a", key="k")
    for method, path, body, text in [
        ("DELETE", "identity/oidc/assignment/a", None,
         'unable to delete assignment "a" because it is currently referenced by these clients: app'),
        ("DELETE", "identity/oidc/key/k", None,
         'unable to delete key "k" because it is currently referenced by these clients: app'),
        ("POST", "identity/oidc/key/k", {"verification_ttl": "1h"},
         'unable to update key "k" because it is currently referenced by one or more clients with an '
         "id_token_ttl greater than 3600 seconds"),
        ("POST", "identity/oidc/client/app", {"key": "default"}, "key modification is not allowed"),
        ("POST", "identity/oidc/client/app", {"client_type": "public"}, "client_type modification is not allowed"),
    ]:
        status, out = await api.call(method, path, body)
        assert (status, out["errors"]) == (400, [text]), path
    listed = (await api.ok("LIST", "identity/oidc/client"))["data"]
    assert listed["keys"] == ["app"] and "client_secret" not in listed["key_info"]["app"]
    providers = (await api.ok("LIST", "identity/oidc/provider?allowed_client_id=zzz"))["data"]
    assert providers["keys"] == ["default"]
    # the secret is sealed at rest
    raw = await app_of(api.client)[STORAGE].get("identity/oidc/client/app")
    assert isinstance(raw, dict) and is_sealed(raw["client_secret"])


async def test_discovery_and_keys(api: Provider) -> None:
    resp = await api.client.get("/v1/identity/oidc/provider/default/.well-known/openid-configuration")
    assert resp.status == 200
    doc = await resp.json()
    assert resp.headers["Cache-Control"] == "max-age=3600"
    assert doc == {  # Vault's document, key for key
        "issuer": ISSUER + "default",
        "jwks_uri": ISSUER + "default/.well-known/keys",
        "authorization_endpoint": "https://authmount.example.com:8200/ui/vault/identity/oidc/provider/default/authorize",
        "token_endpoint": ISSUER + "default/token",
        "userinfo_endpoint": ISSUER + "default/userinfo",
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid"],
        "claims_supported": [],
        "subject_types_supported": ["public"],
        "grant_types_supported": ["authorization_code"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
    }
    assert await api.keys() == {"keys": []}  # no client yet
    await _app(api)
    assert len((await api.keys())["keys"]) == 2  # the default key: the signing key and the next one
    resp = await api.client.get("/v1/identity/oidc/provider/missing/.well-known/keys")
    assert resp.status == 404


@pytest.mark.parametrize(("uri", "allowed", "ok"), [
    (REDIRECT, [REDIRECT], True),
    (REDIRECT + "/", [REDIRECT], False),
    ("http://127.0.0.1:51004/callback", ["http://127.0.0.1/callback"], True),
    ("http://[::1]:51007/callback", ["http://[::1]:8251/callback"], True),
    ("http://localhost:1/cb?x=1", ["http://localhost:2/cb?x=1"], True),
    ("http://localhost:1/cb", ["http://localhost:2/other"], False),
    ("https://app.example.com:444/callback", ["https://app.example.com/callback"], False),
    ("http://127.0.0.1:99999/cb", ["http://127.0.0.1/cb"], False),
])
def test_redirect_uri_rule(uri: str, allowed: list[str], ok: bool) -> None:
    assert redirect_allowed(uri, allowed) is ok


def test_hash_claims_take_the_algorithms_digest() -> None:
    digest = hashlib.sha256(b"abc").digest()
    assert hash_claim("abc", "RS256") == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert len(hash_claim("abc", "ES384")) == 32 and len(hash_claim("abc", "EdDSA")) == 43


async def test_the_sign_in_page_is_served_only_with_the_setting(api: Provider, aiohttp_client: AiohttpClient) -> None:
    page = "/ui/vault/identity/oidc/provider/default/authorize?client_id=marker-7f3a"
    resp = await api.client.get(page)  # ui off (the default)
    assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT, ui=True)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    for path, kind in ((page, "text/html"), ("/ui/vault/auth/sso/oidc/callback?state=s&code=c", "text/html"),
                       ("/ui/authmount/signin.js", "text/javascript")):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == kind, path
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Referrer-Policy"] == "no-referrer"
        assert "marker-7f3a" not in await resp.text()  # nothing of the request is written into the page
    for method, path in (("GET", "/ui/vault/secrets"), ("POST", page), ("GET", "/ui/vault/identity/oidc/provider/a/b/"
                                                                              "authorize")):
        resp = await client.request(method, path)
        assert resp.status == 404, (method, path)


async def test_ui_mounts_lists_the_mounts_tuned_visible_without_a_token(api: Provider) -> None:
    resp = await api.client.get("/v1/sys/internal/ui/mounts")
    assert (resp.status, (await resp.json())["data"]) == (200, {"auth": {}, "secret": {}})
    await api.ok("POST", "sys/auth/jwt/tune", {"listing_visibility": "unauth", "description": "CI"})
    resp = await api.client.get("/v1/sys/internal/ui/mounts")
    assert (await resp.json())["data"] == {"auth": {"jwt/": {"type": "jwt", "description": "CI", "options": {}}},
                                           "secret": {}}


async def test_ui_mounts_for_a_token_add_the_mounts_it_may_use_in_full(api: Provider) -> None:
    """Vault's form for a token: every mount it may use (any rule at or below the mount that
    grants anything), each as ``sys/auth`` shows it, and one mount's preflight."""
    await api.ok("POST", "sys/auth/hidden", {"type": "jwt"})
    await api.ok("PUT", "sys/policies/acl/roles-reader", {"policy": 'path "auth/hidden/role/*" { capabilities = ["read"] }'})
    token = (await api.ok("POST", "auth/token/create", {"policies": ["roles-reader"]}))["auth"]["client_token"]
    caller = {"X-Vault-Token": token}
    data = (await (await api.client.get("/v1/sys/internal/ui/mounts", headers=caller)).json())["data"]
    listed = (await api.ok("GET", "sys/auth"))["data"]
    assert data["auth"] == {"hidden/": listed["hidden/"], "token/": listed["token/"]}  # token/: the default policy
    assert sorted(data["secret"]) == ["identity/", "sys/"]  # the default policy's identity/ and sys/ paths
    assert (await (await api.client.get("/v1/sys/internal/ui/mounts")).json())["data"]["auth"] == {}  # none visible
    resp = await api.client.get("/v1/sys/internal/ui/mounts/auth/hidden/role/x", headers=caller)
    assert (await resp.json())["data"] == {**listed["hidden/"], "path": "hidden/"}
    for path in ("auth/jwt", "auth/nowhere"):  # a mount it may not use, and none: the same answer
        resp = await api.client.get(f"/v1/sys/internal/ui/mounts/{path}", headers=caller)
        assert (resp.status, await resp.json()) == (403, {"errors": [
            f"preflight capability check returned 403, please ensure client's policies grant access to path "
            f'"{path}/"']})
    for headers in ({"X-Vault-Token": "nope"}, {}):
        resp = await api.client.get("/v1/sys/internal/ui/mounts/auth/hidden", headers=headers)
        assert (resp.status, await resp.json()) == (403, {"errors": ["permission denied"]})
    resp = await api.client.get("/v1/sys/internal/ui/mounts", headers={"X-Vault-Token": "nope"})
    assert resp.status == 403


async def test_token_and_userinfo_run_under_the_login_limits(aiohttp_client: AiohttpClient) -> None:
    """They need no token, so a client's calls spend its per-IP bucket as logins do (and are
    audited); the discovery document does not."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        rate_limit=RateLimitSettings(login_per_ip_per_second=0.001, login_burst=2))
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    base = "/v1/identity/oidc/provider/default"
    statuses = [(await client.post(base + "/token", data={"client_id": "x"})).status,
                (await client.get(base + "/userinfo", headers={"Authorization": "Bearer x"})).status,
                (await client.post(base + "/token", data={"client_id": "x"})).status]
    assert statuses == [401, 401, 429]
    assert (await client.get(base + "/.well-known/openid-configuration")).status == 200


async def test_a_sign_in_is_audited_without_a_secret_in_the_log(api: Provider, tmp_path: Path) -> None:
    """The token endpoint needs no token yet issues two: its requests are audited, and the
    client's secret, the code and the verifier are written only as HMACs; the tokens it
    answers are in no entry (the answer is OAuth's, not an envelope)."""
    log = tmp_path / "audit.log"
    await api.ok("POST", "sys/audit/file", {"type": "file", "options": {"file_path": str(log)}})
    app = await _app(api)
    auth = await api.login("gina", [])
    status, out = await api.authorize(auth["client_token"], {
        "client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code",
        "code_challenge": CHALLENGE, "code_challenge_method": "S256"})
    assert status == 200
    status, tokens, _ = await api.exchange({"grant_type": "authorization_code", "code": out["code"],
                                            "redirect_uri": REDIRECT, "code_verifier": VERIFIER,
                                            "client_id": app["client_id"], "client_secret": app["client_secret"]})
    assert status == 200, tokens
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    token_path = "identity/oidc/provider/default/token"
    requests_seen = [e for e in entries if e["type"] == "request" and e["request"]["path"] == token_path]
    assert len(requests_seen) == 1
    sent = requests_seen[0]["request"]["data"]
    assert all(str(sent[k]).startswith("hmac-sha256:") for k in ("client_secret", "code", "code_verifier"))
    for secret in (app["client_secret"], out["code"], VERIFIER, tokens["access_token"], tokens["id_token"]):
        assert secret not in text


async def test_more_token_endpoint_checks(api: Provider) -> None:
    """The exchange's other refusals, in Vault's words: another client's code, a provider that
    no longer serves the client, a wrong or plain PKCE verifier, a deleted entity; and a code
    exchanged without nonce or max_age has neither claim."""
    app = await _app(api)
    other = await _app_named(api, "other")
    auth = await api.login("hank", [])
    creds = (app["client_id"], app["client_secret"])

    async def code(**extra: Any) -> str:
        status, out = await api.authorize(auth["client_token"], {
            "client_id": app["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code",
            **extra})
        assert status == 200, out
        return str(out["code"])

    form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
    status, err, _ = await api.exchange({**form, "code": await code()}, basic=(other["client_id"],
                                                                               other["client_secret"]))
    assert (status, err["error_description"]) == (400, "authorization code was not issued to the client")
    status, err, _ = await api.exchange({**form, "code": await code(code_challenge=VERIFIER)}, basic=creds)
    assert err["error_description"] == "expected code_verifier for token exchange"
    status, tokens, _ = await api.exchange({**form, "code": await code(code_challenge=VERIFIER),
                                            "code_verifier": VERIFIER}, basic=creds)  # plain
    assert status == 200, tokens
    claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert "nonce" not in claims and "auth_time" not in claims
    status, err, _ = await api.exchange({**form, "code": await code(code_challenge=CHALLENGE,
                                                                     code_challenge_method="S256"),
                                         "code_verifier": VERIFIER[:-1] + "x"}, basic=creds)
    assert (status, err) == (400, {"error": "invalid_grant",
                                   "error_description": "invalid code_verifier for token exchange"})
    waiting = await code()
    await api.ok("POST", "identity/oidc/provider/default", {"allowed_client_ids": other["client_id"]})
    status, err, _ = await api.exchange({**form, "code": waiting}, basic=creds)
    assert (status, err["error_description"]) == (401, "client is not authorized to use the provider")
    await api.ok("POST", "identity/oidc/provider/default", {"allowed_client_ids": "*"})
    waiting = await code()
    await api.ok("DELETE", f"identity/entity/id/{auth['entity_id']}")
    status, err, _ = await api.exchange({**form, "code": waiting}, basic=creds)
    assert (status, err["error_description"]) == (400, "identity entity associated with the request not found")
    status, err, _ = await api.exchange({**form, "code": "x"}, basic=creds, provider="missing")
    assert (status, err["error_description"]) == (400, "provider not found")
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        resp = await api.client.post("/v1/identity/oidc/provider/default/token", data={"code": "x"},
                                     headers={"Authorization": header})
        assert (await resp.json())["error_description"] == "client_id parameter is required", header


async def test_userinfo_follows_the_provider_the_client_and_the_scopes_as_they_are_now(api: Provider) -> None:
    await api.ok("POST", "identity/oidc/scope/a", {"template": '{"a": 1}'})
    await api.ok("POST", "identity/oidc/scope/b", {"template": '{"b": 2}'})
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "a,b"})
    app = await _app(api)
    auth = await api.login("ivy", [])
    access = (await api.sign_in(auth["client_token"], app, "openid a b"))["access_token"]
    assert (await api.userinfo(access))[1] == {"sub": auth["entity_id"], "a": 1, "b": 2}
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "a"})
    assert (await api.userinfo(access))[1] == {"sub": auth["entity_id"], "a": 1}  # b no longer offered
    await api.ok("POST", "identity/oidc/scope/a", {"template": '{"b": 3}'})
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "a,b"})
    status, err, headers = await api.userinfo(access)
    assert (status, err["error"]) == (400, "invalid_request") and "conflicting top-level claim" in headers[
        "WWW-Authenticate"]
    await api.ok("POST", "identity/oidc/provider/default", {"allowed_client_ids": "someone-else"})
    status, err, headers = await api.userinfo(access)
    assert (status, err) == (403, {"error": "access_denied",
                                   "error_description": "client is not authorized to use the provider"})
    assert "WWW-Authenticate" not in headers
    await api.ok("POST", "identity/oidc/provider/default", {"allowed_client_ids": "*"})
    await api.ok("DELETE", "identity/oidc/client/app")
    assert (await api.userinfo(access))[:2] == (403, {"error": "access_denied", "error_description": "client not found"})


async def test_the_discovery_document_of_a_missing_provider_and_the_keys_cache(api: Provider) -> None:
    resp = await api.client.get("/v1/identity/oidc/provider/missing/.well-known/openid-configuration")
    assert resp.status == 404
    await _app(api)
    resp = await api.client.get("/v1/identity/oidc/provider/default/.well-known/keys")
    assert 0 < int(resp.headers["Cache-Control"].removeprefix("max-age=")) <= 3600


async def test_only_scopes_the_provider_offers_are_granted_and_the_bounds_of_authorize(api: Provider) -> None:
    """A scope that exists but the provider does not offer adds nothing; a challenge of 43 and
    of 128 characters and a nonce of 1,024 are taken; the access token says what it is."""
    await api.ok("POST", "identity/oidc/scope/offered", {"template": '{"offered": true}'})
    await api.ok("POST", "identity/oidc/scope/hidden", {"template": '{"hidden": true}'})
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "offered"})
    app = await _app(api, client_type="public")
    auth = await api.login("jack", [])
    for verifier in ("v" * 43, "w" * 128):
        status, out = await api.authorize(auth["client_token"], {
            "client_id": app["client_id"], "scope": "openid offered hidden", "redirect_uri": REDIRECT,
            "response_type": "code", "code_challenge": verifier, "nonce": "n" * 1024})
        assert status == 200, out
        status, tokens, _ = await api.exchange({"grant_type": "authorization_code", "code": out["code"],
                                                "redirect_uri": REDIRECT, "client_id": app["client_id"],
                                                "code_verifier": verifier})
        assert status == 200, tokens
        claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["offered"] is True and "hidden" not in claims and claims["nonce"] == "n" * 1024
    body = json.loads(base64.urlsafe_b64decode(tokens["access_token"].split(".")[1] + "=="))
    assert (body["m"], body["p"], body["path"]) == ({"oidc_token_type": "access token"}, [],
                                                    "identity/oidc/provider/default/token")
    assert body["q"] == {"oidc_provider": "default", "oidc_client_id": app["client_id"], "oidc_scopes": "offered",
                         "no_identity_policies": True}


async def _app_named(api: Provider, name: str) -> dict[str, Any]:
    await api.ok("POST", f"identity/oidc/client/{name}", {"redirect_uris": REDIRECT, "assignments": "allow_all"})
    return await api.client_of(name)


async def test_an_access_token_serves_only_its_own_providers_userinfo(api: Provider) -> None:
    """A provider's access token at another provider's userinfo, and a login's batch token
    (signed by the same key, but no access token), are refused as invalid."""
    await api.ok("POST", "identity/oidc/provider/other", {"allowed_client_ids": "*"})
    app = await _app(api)
    auth = await api.login("kim", [])
    tokens = await api.sign_in(auth["client_token"], app)
    assert (await api.userinfo(tokens["access_token"]))[0] == 200
    invalid = {"error": "invalid_token", "error_description": "access token is malformed or invalid"}
    assert (await api.userinfo(tokens["access_token"], provider="other"))[:2] == (401, invalid)
    batch = await api.login("kim", [], role="batch")
    assert batch["client_token"].startswith("hvb.")
    assert (await api.userinfo(batch["client_token"]))[:2] == (401, invalid)


async def test_the_client_credentials_grant_gives_the_client_a_token_of_its_own(api: Provider) -> None:
    """OpenBao's grant: a client that allows it gets an access token signed by its key, for
    itself (``sub`` and ``aud`` its client_id, the ID token's lifetime, a ``jti``), with the
    claims of the scopes asked for that need no entity; checked in OpenBao's order."""
    await api.ok("POST", "identity/oidc/scope/static", {"template": '{"tier": "gold", "at": {{time.now}}}'})
    await api.ok("POST", "identity/oidc/scope/user", {"template": '{"who": {{identity.entity.name}}}'})
    await api.ok("POST", "identity/oidc/provider/default", {"scopes_supported": "static,user"})
    app = await _app(api, client_credentials=True, id_token_ttl="20m")
    assert (app["authorization_code"], app["client_credentials"]) == (True, True)
    creds = (app["client_id"], app["client_secret"])
    status, out, headers = await api.exchange({"grant_type": "client_credentials", "scope": "openid static user x"},
                                              basic=creds)
    assert status == 200 and set(out) == {"token_type", "access_token", "expires_in"}, out
    assert (out["token_type"], out["expires_in"], headers["Cache-Control"]) == ("Bearer", 1200, "no-store")
    claims = _verify(out["access_token"], await api.keys(), app["client_id"])
    assert claims["sub"] == claims["aud"] == app["client_id"] and claims["namespace"] == "root"
    assert claims["exp"] - claims["iat"] == 1200 and len(claims["jti"]) == 36
    assert claims["tier"] == "gold" and abs(claims["at"] - claims["iat"]) <= 1 and "who" not in claims
    form = {"grant_type": "client_credentials", "scope": "static"}
    status, err, _ = await api.exchange(form, basic=creds)
    assert (status, err) == (400, {"error": "invalid_request",
                                   "error_description": 'scope parameter must contain the "openid" value'})
    status, err, _ = await api.exchange({**form, "scope": "openid"}, basic=(app["client_id"], "wrong"))
    assert (status, err["error"]) == (401, "invalid_client")  # the client authenticates first
    status, err, _ = await api.exchange({**form, "grant_type": "password"}, basic=creds)
    assert (status, err["error"]) == (400, "unsupported_grant_type")
    await api.ok("POST", "identity/oidc/client/app", {"client_credentials": False})
    status, err, _ = await api.exchange({**form, "scope": "openid"}, basic=creds)
    assert (status, err) == (400, {"error": "invalid_grant",
                                   "error_description": "client is not authorized to use given credentials flow"})
    await api.ok("POST", "identity/oidc/client/app", {"client_credentials": True, "authorization_code": False})
    assert (await api.exchange({**form, "scope": "openid"}, basic=creds))[0] == 200
    auth = await api.login("alice", [])
    status, code = await api.authorize(auth["client_token"], {"client_id": app["client_id"], "scope": "openid",
                                                              "redirect_uri": REDIRECT, "response_type": "code"})
    assert status == 200  # authorize still answers; the exchange is refused
    status, err, _ = await api.exchange({"grant_type": "authorization_code", "code": code["code"],
                                         "redirect_uri": REDIRECT}, basic=creds)
    assert (status, err["error_description"]) == (400, "client is not authorized to use given credentials flow")


async def test_a_public_client_may_not_use_the_client_credentials_grant(api: Provider) -> None:
    """OpenBao lets a public client (no secret) have the grant, so anyone who knows its
    client_id gets its tokens; authmount refuses it (docs/vault-differences.md row 70)."""
    text = ("the client credentials grant needs a confidential client: a public client has no secret, so anyone who "
            "knows its client_id could get its tokens")
    status, out = await api.call("POST", "identity/oidc/client/pub", {"client_type": "public",
                                                                       "client_credentials": True})
    assert (status, out) == (400, {"errors": [text]})
    await api.ok("POST", "identity/oidc/client/pub", {"client_type": "public", "redirect_uris": REDIRECT,
                                                      "assignments": "allow_all"})
    assert (await api.call("POST", "identity/oidc/client/pub", {"client_credentials": True})) == (400, {"errors": [text]})
    client_id = (await api.client_of("pub"))["client_id"]
    status, err, _ = await api.exchange({"grant_type": "client_credentials", "scope": "openid", "client_id": client_id})
    assert (status, err["error_description"]) == (400, "client is not authorized to use given credentials flow")
