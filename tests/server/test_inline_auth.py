"""Inline authentication (OpenBao 2.4's ``X-Vault-Inline-Auth-*`` headers): the headers read
strictly, the login run as a login of its own (limits, quotas, audit), its token used for the
one request and written nowhere, and what that token cannot do.

Compared with OpenBao 2.7.2 side by side in tests/e2e/test_openbao_differential.py; where
authmount answers otherwise on purpose, docs/vault-differences.md says so (rows 75-77)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest
from plugin.framework import Operation
from server.app import create_app
from server.appkeys import STORAGE
from server.credentials import carries_credential
from server.http import inline as inline_http
from server.http.handlers import BackendHeaders
from server.http.inline import InlineLogin, read_inline
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from server.tokens.store import ACCESSOR_PREFIX, ID_PREFIX
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-inline-tests"
FAILED_HEADER = "X-Vault-Inline-Auth-Failed"
NOT_LOGIN = ("permission denied: X-Vault-Inline-Auth-Path does not name a login path of an enabled auth mount "
             "(auth/<mount>/login)")
KEY = rsa_key(kid="inline")
READER = 'path "sys/auth" { capabilities = ["read"] }\npath "identity/oidc/token/*" { capabilities = ["read"] }'


def param(key: str, value: Any, *, pad: bool = False) -> str:
    """One ``X-Vault-Inline-Auth-Parameter-*`` value: the base64url of ``{"key", "value"}``."""
    raw = base64.urlsafe_b64encode(json.dumps({"key": key, "value": value}).encode()).decode()
    return raw if pad else raw.rstrip("=")


def jwt(sub: str = "ci-job", aud: str = "authmount") -> str:
    now = int(time.time())
    return make_token({"sub": sub, "aud": aud, "iat": now, "exp": now + 300}, key=KEY)


def inline(role: str = "reader", token: str | None = None, path: str = "auth/jwt/login", **more: str) -> dict[str, str]:
    """The headers of an inline login at ``path`` with ``role`` and a JWT."""
    return {"X-Vault-Inline-Auth-Path": path,
            "X-Vault-Inline-Auth-Parameter-Jwt": param("jwt", token if token is not None else jwt()),
            "X-Vault-Inline-Auth-Parameter-Role": param("role", role), **more}


# -- the headers ------------------------------------------------------------------------------
def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


_PATH = ("X-Vault-Inline-Auth-Path", "auth/jwt/login")
_ROLE = ("X-Vault-Inline-Auth-Parameter-role", param("role", "r"))


@pytest.mark.parametrize(("pairs", "expected"), [
    ((), None),
    ((_ROLE,), None),  # parameters without a path: no inline login
    ((_PATH, _ROLE), InlineLogin("auth/jwt/login", Operation.UPDATE, {"role": "r"})),
    ((_PATH,), InlineLogin("auth/jwt/login", Operation.UPDATE, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Parameter-x", param("role", "r", pad=True))),
     InlineLogin("auth/jwt/login", Operation.UPDATE, {"role": "r"})),  # padded: Python's encoder
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "update")), InlineLogin("auth/jwt/login", Operation.UPDATE, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "create")), InlineLogin("auth/jwt/login", Operation.UPDATE, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "read")), InlineLogin("auth/jwt/login", Operation.READ, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Namespace", "")), InlineLogin("auth/jwt/login", Operation.UPDATE, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Namespace", "root/")), InlineLogin("auth/jwt/login", Operation.UPDATE, {})),
    ((_PATH, ("X-Vault-Inline-Auth-Parameter-n", param("n", {"a": [1, None]}))),
     InlineLogin("auth/jwt/login", Operation.UPDATE, {"n": {"a": [1, None]}})),
])
def test_the_headers_name_the_login(pairs: tuple[tuple[str, str], ...], expected: InlineLogin | None) -> None:
    assert read_inline(_headers(*pairs), 1 << 20) == expected


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_X = "X-Vault-Inline-Auth-Parameter-x"
_B64 = 'failed raw url-safe base64 decoding header value of "X-Vault-Inline-Auth-Parameter-x"'
_JSON = 'failed json decoding header value of "X-Vault-Inline-Auth-Parameter-x"'
_DEEP = _JSON + ": nested more than 64 levels"
_LONG = "X-Vault-Inline-Auth-Parameter-" + "n" * 80


@pytest.mark.parametrize(("pairs", "message"), [
    ((_PATH, _PATH), "expected exactly one value for X-Vault-Inline-Auth-Path"),
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "update"), ("X-Vault-Inline-Auth-Operation", "read")),
     "expected exactly one value for X-Vault-Inline-Auth-Operation"),
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "delete")), 'expected a valid login operation in '
                                                           'X-Vault-Inline-Auth-Operation (update, create or read), '
                                                           'not "delete"'),
    ((_PATH, ("X-Vault-Inline-Auth-Operation", "UPDATE")),  # case matters, as in OpenBao
     'expected a valid login operation in X-Vault-Inline-Auth-Operation (update, create or read), not "UPDATE"'),
    ((_PATH, ("X-Vault-Inline-Auth-Namespace", "a"), ("X-Vault-Inline-Auth-Namespace", "b")),
     "expected at most one value for X-Vault-Inline-Auth-Namespace"),
    ((_PATH, ("X-Vault-Inline-Auth-Namespace", "team-a")), 'inline auth namespace "team-a" was not found: authmount '
                                                           "serves only the root namespace"),
    ((_PATH, _ROLE, ("x-vault-inline-auth-parameter-ROLE", param("role", "s"))),
     'expected exactly one value for each auth header parameter ("X-Vault-Inline-Auth-Parameter-role" has more)'),
    ((_PATH, _ROLE, ("X-Vault-Inline-Auth-Parameter-other", param("role", "s"))),
     'parameter "role" is given by more than one X-Vault-Inline-Auth-Parameter-* header'),
    ((_PATH, (_X, param('a"b', 1)), ("X-Vault-Inline-Auth-Parameter-y", param('a"b', 2))),
     'parameter "a\\"b" is given by more than one X-Vault-Inline-Auth-Parameter-* header'),  # a quote, escaped
    ((_PATH, (_LONG, "!")),  # a name shown cut at 64 characters
     f'failed raw url-safe base64 decoding header value of "{_LONG[:64]}"'),
    ((_PATH, (_X, "!!")), _B64),
    # Python's decoder would skip what is not of the alphabet: each of these is refused first.
    ((_PATH, (_X, param("a", "b") + "+")), _B64),
    ((_PATH, (_X, base64.b64encode(b'{"key":"k","value":"\xff\xfe>>?"}').decode())), _B64),
    ((_PATH, (_X, "eyJ rZXki")), _B64),
    ((_PATH, (_X, "abcde")), _B64),  # a length no encoding has (4n+1)
    ((_PATH, (_X, "abcdX")), _B64),
    ((_PATH, (_X, "abc===")), _B64),  # more padding than any encoding has
    ((_PATH, (_X, _b64(b"[1, 2]"))), _JSON),
    ((_PATH, (_X, _b64(b"{nope"))), _JSON),
    ((_PATH, (_X, _b64(b"\xff"))), _JSON),
    ((_PATH, (_X, _b64(b'{"value": 1}'))), f'decoded header lacked `key` field ("{_X}")'),
    ((_PATH, (_X, _b64(b'{"key": 1, "value": 1}'))), f'decoded header had incorrect type for `key` field ("{_X}")'),
    ((_PATH, (_X, _b64(b'{"key": "k"}'))), f'decoded header lacked `value` field ("{_X}")'),
    ((_PATH, (_X, _b64(b'{"key": "k", "value": 1, "v": 2}'))), f'unexpected field in decoded request parameter ("{_X}")'),
    ((_PATH, (_X, _b64(b'{"key": "k", "value": ' + b"[" * 70 + b"]" * 70 + b"}"))), _DEEP),
    ((_PATH, (_X, _b64(b'{"key": "k", "value": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}"))), _DEEP),
    ((_PATH, (_X, _b64(b'{"key": "k", "value": ' + b"[" * 70 + b'"\xff"' + b"]" * 70 + b"}"))), _DEEP),
])
def test_malformed_headers_are_refused_naming_what_failed(pairs: tuple[tuple[str, str], ...], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_inline(_headers(*pairs), 1 << 20)
    assert caught.value.status == 400
    assert caught.value.messages == ["failed to perform inline authentication: " + message]


@pytest.mark.parametrize("value", [
    param("k", "v10", pad=True),  # two "=": Python's padding
    param("k", "v10"),
    param("k", "v1", pad=True),
])
def test_padding_is_optional(value: str) -> None:
    login = read_inline(_headers(_PATH, (_X, value)), 0)
    assert login is not None and login.data["k"].startswith("v1")


def test_the_parameters_are_bounded_by_the_login_body_limit() -> None:
    pairs = [_PATH] + [(f"X-Vault-Inline-Auth-Parameter-{i}", param(f"k{i}", "v" * 100)) for i in range(20)]
    size = sum(len(json.dumps({"key": f"k{i}", "value": "v" * 100})) for i in range(20))
    for limit in (size, 0):  # 0: no limit
        assert read_inline(_headers(*pairs), limit) is not None
    with pytest.raises(InvalidRequest, match="exceed 1 bytes"):
        read_inline(_headers(*pairs), 1)
    with pytest.raises(InvalidRequest) as caught:
        read_inline(_headers(*pairs), size - 1)
    assert caught.value.messages == [f"failed to perform inline authentication: the parameters' decoded values exceed "
                                     f"{size - 1} bytes, the limit of a login's body"]


def test_no_backend_sees_the_inline_headers() -> None:
    seen = BackendHeaders(_headers(_PATH, _ROLE, ("X-Vault-Inline-Auth-Operation", "update"), ("X-Other", "1")))
    assert dict(seen) == {"x-other": "1"}


@pytest.mark.parametrize(("name", "credential"), [
    (inline_http.PATH_HEADER, True), (inline_http.PARAMETER_PREFIX + "role", True),
    (inline_http.OPERATION_HEADER, True), (inline_http.NAMESPACE_HEADER, True), (inline_http.FAILED_HEADER, True),
    ("X-Vault-Token", True), ("Authorization", True), ("Cookie", True), ("Proxy-Authorization", True),
    ("X-Vault-Inline-Auth", False), ("X-Vault-Request", False), ("X-Forwarded-For", False), ("User-Agent", False),
])
def test_the_credential_headers(name: str, credential: bool) -> None:
    """The one list (server/credentials.py) that both keeps headers from the backends and has
    the audit log hash them: every header the inline login reads is on it by its prefix."""
    assert carries_credential(name.lower()) is credential
    assert (name.lower() in BackendHeaders(_headers((name, "v")))) is not credential


# -- on the server --------------------------------------------------------------------------------
class Api:
    """A root client of a dev server with a ``jwt`` mount: role ``reader`` grants ``reader``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = ROOT,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        sent = {"X-Vault-Token": token} if token else {}
        resp = await self.client.request(method, "/v1/" + path, json=body, headers={**sent, **(headers or {})})
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None), resp.headers

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out, _ = await self.call(method, path, body)
        assert status in (200, 204), (path, status, out)
        return out

    async def inline(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call(method, path, body, token=None, headers=inline(**kw))

    async def tokens_stored(self) -> list[str]:
        storage = app_of(self.client)[STORAGE]
        return [*await storage.list(ID_PREFIX), *await storage.list(ACCESSOR_PREFIX)]


async def _api(aiohttp_client: AiohttpClient, **settings: Any) -> Api:
    app = create_app(Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                              **settings))
    api = Api(await aiohttp_client(make_test_server(app)))
    await api.ok("POST", "sys/auth/jwt", {"type": "jwt"})
    await api.ok("POST", "auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem]})
    await api.ok("POST", "sys/policies/acl/reader", {"policy": READER})
    base = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount"}
    roles: dict[str, dict[str, Any]] = {"reader": {}, "batch": {"token_type": "batch"}, "uses": {"token_num_uses": 1},
                                        "far": {"token_bound_cidrs": "10.0.0.0/8"}, "nothing": {"token_policies": ""}}
    for name, extra in roles.items():
        await api.ok("POST", f"auth/jwt/role/{name}", {**base, "token_policies": "reader", **extra})
    return api


@pytest.fixture
async def api(aiohttp_client: AiohttpClient) -> Api:
    return await _api(aiohttp_client)


async def test_a_request_authenticated_inline_is_served_and_no_token_is_written(api: Api) -> None:
    before = await api.tokens_stored()
    status, out, headers = await api.inline("GET", "sys/auth")
    assert status == 200 and "jwt/" in out["data"], out
    assert out["auth"] is None and FAILED_HEADER not in headers  # the token is never shown
    assert await api.tokens_stored() == before
    # Its policies are the role's: not a path they do not grant.
    status, out, headers = await api.inline("GET", "sys/policies/acl")
    assert (status, out, FAILED_HEADER in headers) == (403, {"errors": ["permission denied"]}, False)


async def test_lookup_self_shows_the_token_the_login_stands_for(api: Api) -> None:
    status, out, _ = await api.inline("GET", "auth/token/lookup-self")
    assert status == 200, out
    data = out["data"]
    assert (data["id"], data["accessor"], data["type"], data["policies"]) == ("", "", "service", ["default", "reader"])
    assert data["display_name"] == "jwt-ci-job" and data["path"] == "auth/jwt/login" and data["entity_id"]
    status, out, _ = await api.inline("GET", "auth/token/lookup-self", role="batch")
    assert (status, out["data"]["type"], out["data"]["renewable"]) == (200, "batch", False)
    # What it may do, asked with it (OpenBao looks the token up and answers 400 invalid token).
    status, out, _ = await api.inline("POST", "sys/capabilities-self", {"paths": ["sys/auth", "sys/policies/acl"]})
    assert (status, out["data"]["sys/auth"], out["data"]["sys/policies/acl"]) == (200, ["read"], ["deny"]), out


#: What the token of an inline authentication is told (the texts in docs/troubleshooting.md).
INLINE_RENEW = "the token of an inline authentication cannot be renewed: it is never stored and ends with this request"
INLINE_CREATE = "the token of an inline authentication cannot create tokens: it ends with this request"


async def test_what_the_token_cannot_do(api: Api) -> None:
    await api.ok("POST", "sys/policies/acl/reader", {"policy": READER + '\npath "auth/token/*" { capabilities = '
                                                    '["create", "update", "read", "sudo"] }'})
    assert (await api.inline("POST", "auth/token/renew-self"))[:2] == (400, {"errors": [INLINE_RENEW]})
    for path in ("auth/token/create", "auth/token/create-orphan"):
        assert (await api.inline("POST", path, {"policies": ["reader"]}))[:2] == (400, {"errors": [INLINE_CREATE]})
    # Revoking it: nothing to revoke (OpenBao answers 204 too); the root token is untouched.
    before = await api.tokens_stored()
    assert (await api.inline("POST", "auth/token/revoke-self"))[0] == 204
    assert await api.tokens_stored() == before
    assert (await api.call("GET", "auth/token/lookup-self"))[0] == 200


async def test_every_refusal_of_the_inline_step_says_so(api: Api) -> None:
    cases: list[tuple[dict[str, str], int, str]] = [
        (inline(token=jwt(aud="other")), 400, "audience claim does not match"),
        (inline(role="missing"), 400, 'role "missing" could not be found'),
        (inline(path="auth/jwt/role/reader"), 403, NOT_LOGIN),
        (inline(path="auth/nowhere/login"), 403, NOT_LOGIN),
        (inline(path="sys/health"), 403, NOT_LOGIN),
        (inline(path=""), 403, NOT_LOGIN),
        (inline(role="far"), 403, "permission denied"),  # its token_bound_cidrs do not take 127.0.0.1
        ({**inline(), "X-Vault-Token": ROOT}, 400, "cannot layer inline authentication with token authentication"),
        ({**inline(), "Authorization": f"Bearer {ROOT}"}, 400, "cannot layer inline authentication"),
        ({**inline(), "X-Vault-Inline-Auth-Operation": "read"}, 405, "unsupported operation"),
        ({**inline(), "X-Vault-Inline-Auth-Parameter-x": "!"}, 400, "failed raw url-safe base64"),
    ]
    for headers, status, text in cases:
        got, out, sent = await api.call("GET", "sys/auth", token=None, headers=headers)
        assert (got, sent.get(FAILED_HEADER)) == (status, "true"), (headers, out)
        assert text in out["errors"][0], (headers, out)


async def test_a_path_that_needs_no_token_ignores_the_inline_headers(api: Api) -> None:
    """As it ignores an ``X-Vault-Token``: no login runs, so a bad one fails nothing."""
    bad = inline(token="not-a-jwt")
    status, out, headers = await api.call("GET", "sys/health", token=None, headers=bad)
    assert (status, out["initialized"], FAILED_HEADER in headers) == (200, True, False)
    status, out, headers = await api.call("POST", "auth/jwt/login", {"role": "reader", "jwt": jwt()}, token=None,
                                          headers=bad)
    assert status == 200 and out["auth"]["client_token"] and FAILED_HEADER not in headers


async def test_each_request_is_a_login_of_its_own(api: Api) -> None:
    """A role's ``token_num_uses`` limits a token; each inline request has a new one."""
    for _ in range(3):
        assert (await api.inline("GET", "sys/auth", role="uses"))[0] == 200
    # A disabled entity refuses its inline requests as it refuses its tokens.
    _, out, _ = await api.inline("GET", "auth/token/lookup-self")
    entity = out["data"]["entity_id"]
    await api.ok("POST", f"identity/entity/id/{entity}", {"disabled": True})
    assert (await api.inline("GET", "sys/auth"))[:2] == (403, {"errors": ["permission denied"]})


async def test_the_token_is_checked_as_a_minted_one_would_be(api: Api) -> None:
    """What minting refuses, the inline login refuses too: on a mount tuned to batch tokens, a
    use-limited role's token (a standard login is refused the same way); a mount disabled while
    the login ran is tested in tests/server/test_tokens.py."""
    await api.ok("POST", "sys/auth/jwt/tune", {"token_type": "batch"})
    status, out, _ = await api.call("POST", "auth/jwt/login", {"role": "uses", "jwt": jwt()}, token=None)
    assert (status, out) == (400, {"errors": ["batch tokens cannot have a limited number of uses"]})
    status, out, headers = await api.inline("GET", "sys/auth", role="uses")
    assert (status, out, headers.get(FAILED_HEADER)) == (
        400, {"errors": ["batch tokens cannot have a limited number of uses"]}, "true")
    status, out, _ = await api.inline("GET", "auth/token/lookup-self")  # the mount's type wins
    assert (status, out["data"]["type"], out["data"]["accessor"]) == (200, "batch", "")


async def test_a_role_that_grants_nothing_grants_nothing_inline(api: Api) -> None:
    status, out, headers = await api.inline("GET", "sys/auth", role="nothing")
    assert (status, FAILED_HEADER in headers) == (403, False), out


async def test_an_identity_token_in_one_request(api: Api) -> None:
    """The CI job's use: its JWT for an identity token, with no token stored."""
    await api.ok("POST", "identity/oidc/role/ci", {"key": "default"})
    before = await api.tokens_stored()
    status, out, _ = await api.inline("GET", "identity/oidc/token/ci")
    assert status == 200 and out["data"]["token"].count(".") == 2, out
    assert await api.tokens_stored() == before


async def test_help_takes_an_inline_login(api: Api) -> None:
    status, out, _ = await api.call("GET", "sys/auth?help=1", token=None, headers=inline())
    assert status == 200 and "help" in out
    status, _, headers = await api.call("GET", "sys/auth?help=1", token=None, headers=inline(role="missing"))
    assert (status, headers.get(FAILED_HEADER)) == (400, "true")


async def test_the_login_is_held_to_the_quotas(api: Api) -> None:
    await api.ok("POST", "sys/quotas/rate-limit/logins", {"path": "auth/jwt/login", "rate": 1, "interval": "1m"})
    assert (await api.inline("GET", "sys/auth"))[0] == 200
    status, out, headers = await api.inline("GET", "sys/auth")
    assert (status, headers.get(FAILED_HEADER)) == (429, "true"), out
    assert (await api.call("GET", "sys/auth"))[0] == 200  # the request's own path has no quota


async def test_the_audit_log_has_the_login_and_the_request(api: Api, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    await api.ok("POST", "sys/audit/file", {"type": "file", "options": {"file_path": str(log)}})
    await api.ok("POST", "sys/config/auditing/request-headers/X-Vault-Inline-Auth-Parameter-Jwt", {"hmac": False})
    token = jwt()
    status, out, _ = await api.call("GET", "sys/auth", token=None, headers=inline(token=token))
    assert status == 200
    text = log.read_text()
    assert token not in text and token.split(".")[1] not in text  # neither the JWT nor its claims in clear
    entries = [json.loads(line) for line in text.splitlines()]
    mine = [e for e in entries if e["request"]["path"] in ("auth/jwt/login", "sys/auth")]
    assert [(e["type"], e["request"]["path"]) for e in mine] == [
        ("request", "auth/jwt/login"), ("response", "auth/jwt/login"), ("request", "sys/auth"), ("response", "sys/auth")]
    login_id, request_id = mine[0]["request"]["id"], mine[2]["request"]["id"]
    assert login_id == mine[1]["request"]["id"] and request_id == out["request_id"] != login_id
    issued = mine[1]["response"]["auth"]
    assert "client_token" not in issued and issued["policies"] == ["default", "reader"] and issued["entity_id"]
    auth = mine[2]["auth"]
    assert "client_token" not in auth and "client_token" not in mine[2]["request"]
    assert (auth["policies"], auth["entity_id"]) == (["default", "reader"], issued["entity_id"])
    # The parameter header, audited as asked, is hashed all the same: it is a credential.
    [sent] = mine[2]["request"]["headers"]["x-vault-inline-auth-parameter-jwt"]
    assert sent.startswith("hmac-sha256:")
    # A refused inline login is audited as a refused login, and the request as refused.
    log.write_text("")
    await api.call("GET", "sys/auth", token=None, headers=inline(token=jwt(aud="other")))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["type"], e["request"]["path"]) for e in entries] == [
        ("request", "auth/jwt/login"), ("response", "auth/jwt/login"), ("request", "sys/auth"), ("response", "sys/auth")]
    assert entries[1]["response"]["login_failure"]["reason"] == "audience"
    assert entries[3]["response"]["data"]["error"].startswith("hmac-sha256:")  # a 400's text, hashed (Vault)
