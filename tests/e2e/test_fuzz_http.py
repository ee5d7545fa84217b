"""Seeded random requests against a real authmount process (SQLite file, JWT mount, role).

Each request is a random method (including ``LIST``) on a random API path, often with a
path suffix (``..``, ``%2F``, a 3,000-character segment, 50 query pairs), a random token
header and content type, at times inline authentication headers (well-formed or not, with the
valid JWT or a mutated one), and a random body: raw bytes, deeply nested JSON, duplicate keys,
field names of the real API with hostile values, or a login with the valid JWT or a mutated
copy of it. What must hold for every one of them:

- the reply is complete and its status is below 500 (no internal error, no hang);
- an error reply is ``Content-Type: application/json`` exactly, with an ``errors`` list;
- a login succeeds only with the unmodified JWT, never with a mutated one;
- afterwards the server still answers, and its log holds no ``internal_error``.

The seed is fixed so a failure can be replayed; ``AUTHMOUNT_FUZZ_SEED`` and
``AUTHMOUNT_FUZZ_REQUESTS`` run other or longer campaigns by hand.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import socket
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.e2e.idp import free_port
from tests.e2e.serverproc import ServerProc, start_server
from tests.pg import PostgresServer
from tests.plugin.keyfactory import default_claims, make_token, rsa_key

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("AUTHMOUNT_FUZZ_SEED", "20261126"))
REQUESTS = int(os.environ.get("AUTHMOUNT_FUZZ_REQUESTS", "5000"))

KEY = rsa_key(kid="fuzz-1", slot=12)
LOGIN = "/v1/auth/jwt/login"
PATHS = [LOGIN] * 12 + [
    "/v1/auth/jwt/config", "/v1/auth/jwt/role/r", "/v1/auth/jwt/role/", "/v1/auth/jwt/role/r/explain",
    "/v1/auth/jwt/oidc/auth_url", "/v1/auth/jwt/oidc/callback", "/v1/auth/token/lookup-self",
    "/v1/auth/token/create", "/v1/auth/token/lookup", "/v1/auth/token/renew-self",
    "/v1/auth/token/revoke-accessor", "/v1/auth/token/accessors", "/v1/auth/token/roles/x",
    "/v1/sys/auth", "/v1/sys/auth/x", "/v1/sys/auth/jwt/tune", "/v1/sys/policies/acl/p",
    "/v1/sys/policy/p", "/v1/sys/health", "/v1/sys/internal/specs/openapi", "/v1/sys/seal-status",
    "/v1/sys/init", "/v1/sys/leader", "/v1/sys/capabilities-self", "/v1/sys/capabilities",
    "/v1/sys/capabilities-accessor",
]
SUFFIXES = ["/..", "%2F", "//", "/%00", "?list=maybe", "/" + "a" * 3000,
            "?" + "&".join(f"k{i}=v" for i in range(50))]
METHODS = ["GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS"]
FIELDS = [
    "role", "jwt", "bound_audiences", "user_claim", "policies", "token_ttl", "token_max_ttl",
    "token_type", "jwks_url", "jwt_validation_pubkeys", "oidc_discovery_url", "bound_claims",
    "claim_mappings", "token_num_uses", "allowed_redirect_uris", "redirect_uri", "state", "code",
    "token", "accessor", "type", "description", "config", "policy", "rules", "ttl",
    "explicit_max_ttl", "period", "token_bound_cidrs", "bound_claims_type", "jwt_supported_algs",
    "default_role", "jwks_pairs", "max_age", "expiration_leeway", "groups_claim", "role_type",
    "list", "meta", "display_name", "id", "no_parent", "renewable", "paths", "path",
]
VALUES: list[Any] = [
    None, True, False, 0, -1, 2**70, 1.5e308, "", "x" * 5000, "\u0000", [], {}, [1, "a"],
    {"a": {"b": []}}, "1h", "-5s", "9999999999999999999s", "RS256", "none", "HS256",
    "http://127.0.0.1:1/x", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "default", "root", "9" * 400, "9" * 400 + "s", "1." + "9" * 400 + "h",
]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                 "application/merge-patch+json"]


def mutate(rng: random.Random, token: str) -> str:
    """``token`` with 1-4 characters replaced, dropped or inserted."""
    chars = list(token)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice(string.ascii_letters + string.digits + "-_.=+/ ")
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice(".=_-"))
    return "".join(chars)


INLINE_PATHS = ["auth/jwt/login"] * 6 + ["auth/jwt/role/r", "", "auth/x/login", "/auth/jwt/login", "sys/health",
                                         "auth/jwt/oidc/callback", "auth/jwt/login/", "a" * 300]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def inline_headers(rng: random.Random, jwt: str) -> list[str]:
    """Inline authentication headers (``X-Vault-Inline-Auth-*``): a login path, the role and a
    JWT (the valid one or a mutated copy), and at times a parameter that is not one, a field of
    the API with a hostile value, a repeated header, an operation or a namespace."""
    out = [f"X-Vault-Inline-Auth-Path: {rng.choice(INLINE_PATHS)}"]
    params: list[tuple[str, Any]] = [("jwt", rng.choice([jwt, mutate(rng, jwt)])), ("role", rng.choice(["r", "x"]))]
    params += [(rng.choice(FIELDS), rng.choice(VALUES)) for _ in range(rng.randint(0, 2))]
    for i, (key, value) in enumerate(params):
        encoded = _b64(json.dumps({"key": key, "value": value}).encode())
        k = rng.random()
        if k < 0.05:
            encoded = rng.choice(["!!", "abcde", _b64(b"[1]"), _b64(b'{"key": 1, "value": 2}'), _b64(b"\xff" * 9),
                                  _b64(b'{"key": "k"}'), _b64(b'{"key": "k", "value": 1, "x": 2}'),
                                  _b64(b'{"key": "k", "value": ' + b"[" * 80 + b"]" * 80 + b"}"), "=" * 4])
        out.append(f"X-Vault-Inline-Auth-Parameter-{i if k > 0.1 else 'jwt'}: {encoded}")
    if rng.random() < 0.1:
        out.append("X-Vault-Inline-Auth-Operation: " + rng.choice(["update", "create", "read", "delete", "", "UPDATE"]))
    if rng.random() < 0.05:
        out.append("X-Vault-Inline-Auth-Namespace: " + rng.choice(["", "root", "ns1", "\u00e9"]))
    if rng.random() < 0.05:
        out.append(rng.choice(out))
    return out


def random_body(rng: random.Random, jwt: str) -> tuple[bytes, str | None]:
    """A body and, for a login body, the JWT it carries."""
    k = rng.random()
    if k < 0.45:
        token = rng.choice([jwt, mutate(rng, jwt), mutate(rng, jwt)])
        role = rng.choice(["r", "R", "r ", "x"])
        return json.dumps({"role": role, "jwt": token}).encode(), token
    if k < 0.55:
        return rng.randbytes(rng.randint(0, 200)), None
    if k < 0.6:
        return b"[" * 5000, None
    if k < 0.65:
        return b'{"role": "r", "role": "x"}', None
    data: dict[str, Any] = {rng.choice(FIELDS): rng.choice(VALUES) for _ in range(rng.randint(0, 6))}
    if rng.random() < 0.3:
        data = {rng.choice(FIELDS): data}
    return json.dumps(data).encode(), None


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 request on a fresh connection; return status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


#: Where the paths are that answer OAuth's ``{"error", "error_description"}`` rather than
#: Vault's ``errors`` (``.../authorize``, ``token``, ``userinfo``; a campaign's ``where``
#: may cut the path before its last segment).
_OAUTH = re.compile(r"identity/oidc/provider/")


def check_reply(where: str, method: str, reply: tuple[int, dict[str, str], bytes], statuses: dict[int, int]) -> None:
    """What every reply of a campaign must be: below 500, and an error is Vault's JSON body."""
    status, headers, body = reply
    statuses[status] = statuses.get(status, 0) + 1
    assert status < 500, f"{where} -> {status} {body[:300]!r}"
    if status >= 400 and method != "HEAD":
        assert headers.get("content-type") == "application/json", where
        answer = json.loads(body)
        if _OAUTH.search(where) and "errors" not in answer:
            # The OIDC provider's flow answers OAuth's errors, as Vault's does (RFC 6749 5.2).
            assert isinstance(answer["error"], str) and isinstance(answer["error_description"], str), where
            return
        assert isinstance(answer["errors"], list), where


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    workdir = tmp_path_factory.mktemp("fuzz")
    config = {
        "storage": {"type": "sqlite", "path": str(workdir / "fuzz.db")},
        "rate_limit": {"login_per_ip_per_second": 0, "login_burst": 0},
    }
    with start_server(config=config, workdir=workdir) as srv:
        client = srv.client()
        client.sys.enable_auth_method("jwt", path="jwt")
        client.write_data("auth/jwt/config", data={"jwt_validation_pubkeys": [KEY.pem]})
        client.write_data("auth/jwt/role/r", data={
            "role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
            "policies": ["default"], "bound_claims_type": "glob", "bound_claims": {"sub": ["*"]},
        })
        yield srv


def test_random_requests_never_fail_the_server(server: ServerProc) -> None:
    rng = random.Random(SEED)
    jwt = make_token(default_claims(exp=int(default_claims()["exp"]) + 3600), key=KEY)
    port = int(server.address.rsplit(":", 1)[1])
    tokens = [server.root_token or "", "hvs.bogus", "", "hvb." + "A" * 100]
    statuses: dict[int, int] = {}
    logins = 0
    for n in range(REQUESTS):
        method, path = rng.choice(METHODS), rng.choice(PATHS)
        if rng.random() < 0.1:
            path += rng.choice(SUFFIXES)
        body, login_jwt = random_body(rng, jwt)
        head = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(body)}"]
        if rng.random() < 0.7:
            head.append("X-Vault-Token: " + rng.choice(tokens))
        if rng.random() < 0.5:
            head.append("Content-Type: " + rng.choice(CONTENT_TYPES))
        if rng.random() < 0.15:
            head += inline_headers(rng, jwt)
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        status, headers, reply = exchange(port, raw)
        where = f"request {n} (seed {SEED}): {method} {path[:80]} body {body[:120]!r}"
        check_reply(where, method, (status, headers, reply), statuses)
        if status == 200 and method in ("POST", "PUT") and path == LOGIN:
            assert login_jwt == jwt, f"{where}: a mutated JWT logged in"
            logins += 1
    # The campaign reached a successful login and the validation errors (not 4xx everywhere).
    assert logins > 0 and statuses.get(400, 0) > 0, (logins, statuses)
    assert server.client().sys.read_health_status(method="GET")["initialized"] is True
    assert "internal_error" not in server.log_text()


#: Every duration field the API takes, where it is taken.
DURATION_FIELDS = [
    *[("/v1/auth/jwt/role/r", f) for f in ("token_ttl", "token_max_ttl", "token_explicit_max_ttl", "token_period",
                                          "max_age", "max_token_age", "expiration_leeway", "not_before_leeway",
                                          "clock_skew_leeway", "ttl", "max_ttl", "period")],
    *[("/v1/auth/token/create", f) for f in ("ttl", "explicit_max_ttl", "period")],
    ("/v1/auth/token/renew-self", "increment"),
    *[("/v1/sys/auth/jwt/tune", f) for f in ("default_lease_ttl", "max_lease_ttl")],
]
LONG_DURATIONS = ["9" * 400, "9" * 400 + "s", "-" + "9" * 400 + "s", "1" + "0" * 300 + "h", "9" * 5000,
                  "1." + "9" * 400 + "s", "9" * 400 + "d"]


@pytest.mark.parametrize(("path", "field"), DURATION_FIELDS, ids=[f"{p.rsplit('/', 1)[1]} {f}" for p, f in DURATION_FIELDS])
def test_long_digit_durations_are_refused_with_a_400(server: ServerProc, path: str, field: str) -> None:
    """Hundreds of digits once raised OverflowError: a 500 instead of the 400 an in-range
    but too large value gets."""
    port = int(server.address.rsplit(":", 1)[1])
    for value in LONG_DURATIONS:
        body = json.dumps({field: value, "user_claim": "sub"}).encode()
        head = [f"POST {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(body)}",
                f"X-Vault-Token: {server.root_token}", "Content-Type: application/json"]
        status, headers, reply = exchange(port, ("\r\n".join(head) + "\r\n\r\n").encode() + body)
        assert status == 400, (field, str(value)[:20], status, reply[:200])
        assert headers.get("content-type") == "application/json"
        assert "duration out of range" in json.loads(reply)["errors"][0], reply[:300]


# -- every documented operation, with values of its declared types ----------------------------------
#: Values for a path capture: real names, other spellings of them, and hostile ones.
CAPTURES = ["jwt", "sso", "r", "R", "default", "ops", "x-team", "spare", "", "..", "%2F", "a%00b", " r", "r\t",
            "A" * 300, "ünï", "jwt/", "a/b"]
#: Typed values by OpenAPI type, each list's first ones the likeliest to pass coercion.
TYPED: dict[str, list[Any]] = {
    "string": ["", "x", "default", "r", "*", "sub", "vault", "jwt", "RS256", "glob", "1h", "ünï", "a" * 300,
               "http://127.0.0.1:1/x", "https://127.0.0.1:1/.well-known", "a,b", "/sub", "root", "a\x00b"],
    "duration": ["1h", "30s", "0", 60, "system", "-5s", "1e3", "soon", 2**40, "9" * 40],
    "boolean": [True, False, "true", "false", "1", "maybe", 1, None],
    "integer": [0, 1, -1, 5, "5", "x", 2**63, 1.5],
    "array": [[], ["a"], ["default", "x"], "a,b", [1, {}], ["*"], ["x"] * 200, [""], [None]],
    "object": [{}, {"sub": "x"}, {"sub": ["*"]}, {"a": {"b": {}}}, "k=v", [], {"": ""}, {"x" * 300: 1}],
}


def _typed(rng: random.Random, schema: dict[str, Any]) -> Any:
    """A value of the property's declared type (mostly), or any hostile value."""
    if rng.random() < 0.25:
        return rng.choice(VALUES)
    kind = "duration" if schema.get("format") == "duration" else schema.get("type", "string")
    return rng.choice(TYPED.get(kind, TYPED["string"]))


def _properties(operation: dict[str, Any]) -> dict[str, Any]:
    """The fields an OpenAPI operation's body takes (whatever its media type: a PATCH's is a
    merge patch), or its query parameters (a LIST's ``after`` and ``limit``)."""
    query = {p["name"]: p.get("schema", {}) for p in operation.get("parameters", [])
             if p.get("in") == "query" and p["name"] != "list"}
    if query:
        return query
    content: dict[str, Any] = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        return dict(media.get("schema", {}).get("properties", {}))
    return {}


class Campaign:
    """The documented operations of a running server, and the state that the requests need
    to stay meaningful: an admin token that the campaign may revoke and gets again, and the
    ``jwt`` mount and its role, which the campaign may delete and gets again."""

    def __init__(self, srv: ServerProc, workdir: Any) -> None:
        self.srv = srv
        self.port = int(srv.address.rsplit(":", 1)[1])
        #: Every request goes to one of these, at random (nodes of one cluster).
        self.ports = [self.port]
        self.workdir = workdir
        self.admin = ""
        self.restore()
        self.operations: list[tuple[str, str, dict[str, Any]]] = []
        self.unauthenticated: set[str] = set()

    def furnish(self) -> None:
        """An OIDC mount beside the jwt one, and an identity group: more paths to document."""
        assert self.call("POST", "/v1/sys/auth/sso", {"type": "oidc"})[0] == 204
        assert self.call("POST", "/v1/identity/group/name/ops", {"policies": ["default"]})[0] in (200, 204)

    def document(self) -> None:
        """Take the operations of the server's OpenAPI document as it is now, and the routes
        that need no token."""
        paths = json.loads(self.call("GET", "/v1/sys/internal/specs/openapi")[2])["paths"]
        self.operations = [
            (verb, route, _properties(op)) for route, entry in paths.items() if route not in STREAMING
            for verb, op in entry.items() if verb in ("get", "post", "delete", "patch")
        ]
        self.unauthenticated = {route for route, entry in paths.items() if entry.get("x-vault-unauthenticated")}

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
        head = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(data)}",
                f"Content-Type: {kind}", f"X-Vault-Token: {token if token is not None else self.admin}"]
        port = self.ports[0] if len(self.ports) == 1 else random.choice(self.ports)
        return exchange(port, ("\r\n".join(head) + "\r\n\r\n").encode() + data)

    def restore(self) -> None:
        """An admin token that works, the jwt mount, its config and role ``r`` (the server's
        root token itself is never sent by the campaign). Concurrent requests may revoke the
        new admin token, or disable the mount again (a worker may also not see another's change
        for up to 100 ms): tried again, five times at most, 0.1 s apart."""
        root = self.srv.root_token or ""
        for attempt in range(5):
            if attempt:
                time.sleep(0.1)
            if not self.admin or self.call("GET", "/v1/auth/token/lookup-self")[0] != 200:
                status, _, body = self.call("POST", "/v1/auth/token/create-orphan",
                                            {"policies": ["root"], "ttl": "24h"}, token=root)
                assert status == 200, body
                self.admin = json.loads(body)["auth"]["client_token"]
            if self.call("GET", "/v1/sys/auth/jwt")[0] != 200:
                self.call("POST", "/v1/sys/auth/jwt", {"type": "jwt"})
            statuses = [
                self.call("POST", "/v1/auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem]})[0],
                self.call("POST", "/v1/auth/jwt/role/r", {"role_type": "jwt", "bound_audiences": ["vault"],
                                                          "user_claim": "sub", "policies": ["default"]})[0],
            ]
            if all(status in (200, 204) for status in statuses):
                return
        raise AssertionError(f"could not restore the campaign's admin token, mount and role: {statuses}")

    @staticmethod
    def query(rng: random.Random, props: dict[str, Any]) -> str:
        """A query string of some of the documented parameters (and at times an unknown one)."""
        names = list(props) + ["bogus_field"]
        picked = rng.sample(names, min(len(names), rng.randint(0, 3)))
        values = [(name, _typed(rng, props.get(name, {}))) for name in picked]
        return urlencode([(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values])

    def body(self, rng: random.Random, route: str, props: dict[str, Any]) -> Any:
        if rng.random() < 0.08:
            return rng.choice([[], "x", None, 5, {"x" * 5000: 1}])
        names = list(props) + ["bogus_field"]
        out = {name: _typed(rng, props.get(name, {})) for name in rng.sample(names, min(len(names), rng.randint(0, 6)))}
        if route.startswith("/sys/audit/"):  # never outside the work dir, never a device that fails every request
            out.update(type=rng.choice(["file", "file", "nosuch"]),
                       options={"file_path": rng.choice([str(self.workdir / "audit.log"), "discard", ""])})
        return out


def sqlite_config(db: Path) -> dict[str, Any]:
    """Settings of a campaign's server: a SQLite file, no rate limit."""
    return {"storage": {"type": "sqlite", "path": str(db)}, "rate_limit": {"login_per_ip_per_second": 0, "login_burst": 0}}


#: Routes that answer with a stream until the client leaves (``vault monitor``): not one
#: request and one reply (tests/server/test_diagnostics.py covers them).
STREAMING = frozenset({"/sys/monitor"})
#: The routes whose GET shows what their POST writes: a refused write must leave it as it was.
STATEFUL = re.compile(r"/(role|cel/role)/\{name\}$|^/sys/(policies/acl|policy)/\{name\}$|/tune$|"
                      r"^/identity/group/(name/\{name\}|id/\{id\})$|^/auth/[^/]+/config$|request-headers/\{header\}$")


def test_every_documented_operation_survives_random_values(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each request is an operation of the server's own OpenAPI document, with random path
    captures and a body of the declared fields with values of their declared types (often
    valid, so the request reaches the checks past coercion) or hostile ones, as an admin, a
    bogus token or nobody. What must hold, besides the first campaign's rules: a write that
    was refused (4xx) leaves what its path reads back exactly as it was."""
    workdir = tmp_path_factory.mktemp("fuzz-openapi")
    rng = random.Random(SEED + 1)
    with start_server(config=sqlite_config(workdir / "fuzz.db"), workdir=workdir) as srv:
        campaign = Campaign(srv, workdir)
        campaign.furnish()
        campaign.document()
        assert len(campaign.operations) > 100
        statuses: dict[int, int] = {}
        refused_writes = 0
        for n in range(REQUESTS // 2):
            if n % 100 == 0:
                campaign.restore()
            verb, route, props = rng.choice(campaign.operations)
            path = re.sub(r"\{\w+\}", lambda _: rng.choice(CAPTURES), route)
            method = verb.upper() if rng.random() < 0.9 else rng.choice(METHODS)
            who = rng.choices(["admin", "bogus", "nobody"], weights=[8, 1, 1])[0]
            body = campaign.body(rng, route, props) if method in ("POST", "PUT", "PATCH") else None
            if verb == "get" and props and method == "GET":
                path += "?list=true&" + campaign.query(rng, props)
            before = None
            if STATEFUL.search(route) and method in ("POST", "PATCH"):
                before = campaign.call("GET", "/v1" + path)
                if before[0] == 403:  # an earlier request revoked the admin token
                    campaign.restore()
                    before = campaign.call("GET", "/v1" + path)
            token = {"admin": campaign.admin, "bogus": "hvs.bogus", "nobody": ""}[who]
            status, headers, reply = campaign.call(method, "/v1" + path, body, token=token)
            where = f"request {n} (seed {SEED + 1}): {method} {path[:80]} body {json.dumps(body)[:200]}"
            check_reply(where, method, (status, headers, reply), statuses)
            if before is not None and 400 <= status < 500:
                after = campaign.call("GET", "/v1" + path)
                assert _shown(after) == _shown(before), f"{where}: refused ({status} {reply[:200]!r}) but changed"
                refused_writes += 1
            if status == 403 and token == campaign.admin:  # an earlier request revoked it
                campaign.restore()
        # The campaign got past validation (2xx) and into it (400), and checked refused writes.
        assert statuses.get(200, 0) + statuses.get(204, 0) > REQUESTS // 20 and statuses.get(400, 0) > 0, statuses
        assert refused_writes > 50, refused_writes
        assert srv.client().sys.read_health_status(method="GET")["initialized"] is True
        assert "internal_error" not in srv.log_text()


def _shown(reply: tuple[int, dict[str, str], bytes]) -> tuple[int, Any]:
    """What a GET shows, without what changes by itself (request ids, key-source fetch times)."""
    status, _, body = reply
    if status != 200:
        return status, None
    data = json.loads(body).get("data")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "key_sources"}
    return status, data


#: Text that no storage key can hold: every engine refuses it, so wherever a field's value
#: becomes (part of) a key unchecked, the request fails with a 500.
UNSTORABLE = ["a\x00b", "a\x00", "\ud800"]


def test_every_documented_field_refuses_unstorable_text(tmp_path: Path) -> None:
    """Each field of each documented operation (body field, LIST query parameter, path
    capture) alone with a NUL or a lone surrogate, as root: never a 500. Found a key name, a
    scope, an assignment and a role list's ``after`` that reached storage as they were."""
    with start_server(config=sqlite_config(tmp_path / "nul.db"), workdir=tmp_path) as srv:
        campaign = Campaign(srv, tmp_path)
        campaign.furnish()
        campaign.document()
        sent = 0
        for verb, route, props in campaign.operations:
            method = verb.upper()
            for value in UNSTORABLE:
                if "{" in route:
                    sent += 1
                    check_reply(f"{method} {route} capture", method,
                                campaign.call(method, "/v1" + re.sub(r"\{\w+\}", "a%00b", route), {} if method != "GET"
                                              else None), {})
                for name in props:
                    path = "/v1" + re.sub(r"\{\w+\}", "x", route)
                    sent += 1
                    if verb == "get":
                        reply = campaign.call("GET", f"{path}?list=true&{urlencode({name: value}, errors='surrogatepass')}")
                    else:
                        reply = campaign.call(method, path, {name: value})
                    check_reply(f"{method} {route} {name}={value!r}", method, reply, {})
                    if reply[0] == 403:  # the request revoked the campaign's admin token
                        campaign.restore()
        assert sent > 1500, sent
        assert "internal_error" not in srv.log_text()


#: Values at the edges of each JSON type, for one field at a time.
EDGES: list[Any] = [None, True, -1, 0, 1.5, 2**70, -2**70, 1e308, [], {}, "", "9" * 400, "1e400"]


def test_what_a_write_accepts_reads_back(tmp_path: Path) -> None:
    """For each documented path that is written and read (a role, a quota, a policy, a key,
    ...): each field alone with each edge value, as root, then a read, and ``?help=1``. Every
    answer is below 500: a value a write accepts is one its read can show (a quota's ``rate``
    of 1e308 was stored, and every read of it was a 500; the help of a float field was one)."""
    with start_server(config=sqlite_config(tmp_path / "edges.db"), workdir=tmp_path) as srv:
        campaign = Campaign(srv, tmp_path)
        campaign.furnish()
        campaign.document()
        routes = {route: props for verb, route, props in campaign.operations if verb == "post"}
        readable = {route for verb, route, _ in campaign.operations if verb == "get"}
        sent = 0
        for route in sorted(routes.keys() & readable):
            path = "/v1" + re.sub(r"\{\w+\}", "edge", route)
            check_reply(f"GET {route}?help=1", "GET", campaign.call("GET", path + "?help=1"), {})
            for name in routes[route]:
                for value in EDGES:
                    sent += 1
                    wrote = campaign.call("POST", path, {name: value})
                    check_reply(f"POST {route} {name}={value!r:.40}", "POST", wrote, {})
                    read = campaign.call("GET", path)
                    check_reply(f"GET {route} after {name}={value!r:.40} ({wrote[0]})", "GET", read, {})
                    if 403 in (wrote[0], read[0]):  # the write revoked the campaign's admin token
                        campaign.restore()
        assert sent > 1000, sent
        assert "internal_error" not in srv.log_text()


def test_concurrent_operations_on_two_workers(tmp_path: Path) -> None:
    """The documented operations again, from 8 clients at once against ``--workers 2`` on one
    SQLite file: writes on one worker meet the other's caches, rotations and device changes
    race requests in flight. Every reply stays below 500 and the log has no internal error.
    This campaign found a keyring reload that took a rotation's term back (``sys/rotate``
    answered 500), a login refused with 503 because its audit device was disabled while it
    waited for its entry, and a role write that lost its mount's TTLs to a disable (500)."""
    config = {**sqlite_config(tmp_path / "fuzz.db"), "listen_address": f"127.0.0.1:{free_port()}"}
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"]) as srv:
        run_concurrent_campaign(Campaign(srv, tmp_path), [srv])


def test_concurrent_operations_on_two_postgres_nodes(
    postgres_server: PostgresServer, tmp_path: Path  # noqa: F811
) -> None:
    """The same against two nodes on one PostgreSQL database, each request to either node."""
    config = {"storage": {"type": "postgres", "dsn": postgres_server.create_database()},
              "rate_limit": {"login_per_ip_per_second": 0, "login_burst": 0}}
    with start_server(config=config, workdir=tmp_path / "a") as a:
        with start_server(config=config, workdir=tmp_path / "b", root_token=a.root_token) as b:
            campaign = Campaign(a, tmp_path)
            campaign.ports = [campaign.port, int(b.address.rsplit(":", 1)[1])]
            run_concurrent_campaign(campaign, [a, b])


def run_concurrent_campaign(campaign: Campaign, servers: list[ServerProc]) -> None:
    """8 clients, ``REQUESTS // 40`` requests each; what every reply and the logs must be."""
    jwt = make_token(default_claims(exp=int(default_claims()["exp"]) + 3600), key=KEY)
    campaign.furnish()
    time.sleep(0.2)  # every node or worker sees the new mount before its paths are read
    campaign.document()
    statuses: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(SEED + 100 + seed)
        for n in range(REQUESTS // 40):
            body: Any
            if rng.random() < 0.2:
                method, path, body = "POST", "/auth/jwt/login", {"role": "r", "jwt": jwt}
                reply = campaign.call(method, "/v1" + path, body, token="")
            else:
                verb, route, props = rng.choice(campaign.operations)
                path = re.sub(r"\{\w+\}", lambda _: rng.choice(["jwt", "sso", "r", "default", "ops", "x"]), route)
                method = verb.upper()
                body = campaign.body(rng, route, props) if method == "POST" else None
                reply = campaign.call(method, "/v1" + path, body)
            with lock:
                try:
                    check_reply(f"client {seed} request {n}: {method} {path}", method, reply, statuses)
                    if n % 50 == 49:
                        campaign.restore()
                except AssertionError as exc:
                    failures.append(str(exc)[:400])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [line[:3000] for srv in servers for line in srv.log_text().splitlines() if "internal_error" in line]
    assert failures == [], (failures[:5], errors[:2])
    assert statuses.get(200, 0) > REQUESTS // 100, statuses  # a twentieth of the 8 x REQUESTS // 40
    for srv in servers:
        assert srv.client().sys.read_health_status(method="GET")["initialized"] is True
    assert errors == []
    time.sleep(0.3)  # every change has reached every node or worker
    campaign.restore()
    for port in campaign.ports:
        assert_identity_invariants(campaign, port)


def assert_identity_invariants(campaign: Campaign, port: int) -> None:
    """What no interleaving of requests may break, as one node shows it: group names unique
    (case-insensitively), group alias names unique per mount, one alias per group, and every
    alias naming a group that names it back."""
    ports, campaign.ports = campaign.ports, [port]
    try:
        groups = _listed(campaign, "/v1/identity/group/id")
        aliases = _listed(campaign, "/v1/identity/group-alias/id")
        names = [info["name"].lower() for info in groups.values()]
        assert len(names) == len(set(names)), sorted(names)
        alias_names = [(info["mount_accessor"], info["name"].lower()) for info in aliases.values()]
        assert len(alias_names) == len(set(alias_names)), sorted(alias_names)
        owners = [info["canonical_id"] for info in aliases.values()]
        assert len(owners) == len(set(owners)), sorted(owners)
        for aid, info in aliases.items():
            status, _, body = campaign.call("GET", f"/v1/identity/group/id/{info['canonical_id']}")
            assert status == 200 and json.loads(body)["data"]["alias"].get("id") == aid, (aid, info, status, body[:300])
    finally:
        campaign.ports = ports


def _listed(campaign: Campaign, path: str) -> dict[str, Any]:
    status, _, body = campaign.call("LIST", path)
    assert status in (200, 404), (path, status, body[:300])
    return json.loads(body)["data"]["key_info"] if status == 200 else {}


#: Path captures for the ACL campaign: the names its policies grant or deny, spelled otherwise.
ACL_CAPTURES = ["jwt", "JWT", "sso", "r", "R", "admin", "ADMIN", "Admin", "admin/", "admin%2F", "%61dmin", "default",
                "root", "reader", "ops", "x", "jwt/", "/jwt", "jwt//", "a/../admin", "..", "%2e%2e", "admin%20"]


def test_a_token_that_may_only_read_changes_nothing(tmp_path: Path) -> None:
    """A token whose policies grant ``read`` and ``list`` on everything, and deny the admin
    role, sends every documented write and delete (and other methods), with path names
    spelled in other cases, with slashes, escapes and dot segments: the database holds the
    same rows afterwards, byte for byte, and no spelling of the denied role reads it."""
    db = tmp_path / "acl.db"
    rng = random.Random(SEED + 2)
    with start_server(config=sqlite_config(db), workdir=tmp_path) as srv:
        campaign = Campaign(srv, tmp_path)
        campaign.furnish()
        for name, policy in (("reader", 'path "*" { capabilities = ["read", "list"] }'),
                             ("no-admin", 'path "auth/jwt/role/admin" { capabilities = ["deny"] }')):
            assert campaign.call("POST", f"/v1/sys/policies/acl/{name}", {"policy": policy})[0] == 204
        assert campaign.call("POST", "/v1/auth/jwt/role/admin", {"role_type": "jwt", "user_claim": "sub",
                                                                 "bound_audiences": ["x"], "policies": ["x"]})[0] == 204
        campaign.document()
        status, _, created = campaign.call("POST", "/v1/auth/token/create", {
            "policies": ["reader", "no-admin"], "no_default_policy": True, "ttl": "24h"})
        assert status == 200, created
        reader = json.loads(created)["auth"]["client_token"]
        # What an unauthenticated path writes (a login's token) is anyone's to write: left out.
        writes = [op for op in campaign.operations if op[0] != "get" and op[1] not in campaign.unauthenticated]
        time.sleep(0.3)  # the writes above have reached the file
        before = _rows(db)
        statuses: dict[int, int] = {}
        for n in range(REQUESTS // 2):
            verb, route, props = rng.choice(writes)
            path = re.sub(r"\{\w+\}", lambda _: rng.choice(ACL_CAPTURES), route)
            method = verb.upper() if rng.random() < 0.85 else rng.choice(["POST", "PUT", "DELETE", "PATCH", "LIST"])
            body = campaign.body(rng, route, props) if method in ("POST", "PUT", "PATCH") else None
            reply = campaign.call(method, "/v1" + path, body, token=reader)
            check_reply(f"request {n}: {method} {path}", method, reply, statuses)
            # refused, or (a dot segment, an empty one) redirected to the clean path, unread
            assert reply[0] >= 400 or reply[0] == 307, \
                f"request {n}: {method} {path} {json.dumps(body)[:200]} -> {reply[0]} {reply[2][:200]!r}"
        for spelling in ("admin", "ADMIN", "Admin", "admin/", "%61dmin", "ADMIN/", "admin%2F"):
            status = campaign.call("GET", f"/v1/auth/jwt/role/{spelling}", token=reader)[0]
            assert status in (400, 403, 404), (spelling, status)
        assert campaign.call("GET", "/v1/auth/jwt/role/r", token=reader)[0] == 200  # the policy does read
        time.sleep(0.3)
        assert _rows(db) == before
        assert statuses.get(403, 0) > REQUESTS // 10, statuses


def _rows(db: Path) -> dict[str, bytes]:
    """Every key and value of an authmount SQLite file, read from another connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT key, value FROM kv"))
    finally:
        con.close()
