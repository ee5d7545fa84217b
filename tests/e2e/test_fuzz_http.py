"""Seeded random requests against a real authmount process (SQLite file, JWT mount, role).

Each request is a random method (including ``LIST``) on a random API path, often with a
path suffix (``..``, ``%2F``, a 3,000-character segment, 50 query pairs), a random token
header and content type, and a random body: raw bytes, deeply nested JSON, duplicate keys,
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

import json
import os
import random
import socket
import string
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.serverproc import ServerProc, start_server
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
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]


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
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        status, headers, reply = exchange(port, raw)
        where = f"request {n} (seed {SEED}): {method} {path[:80]} body {body[:120]!r}"
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, f"{where} -> {status} {reply[:300]!r}"
        if status >= 400 and method != "HEAD":
            assert headers.get("content-type") == "application/json", where
            assert isinstance(json.loads(reply)["errors"], list), where
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
