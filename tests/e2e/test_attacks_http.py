"""docs/reference/security.md section 2 (all subsections) and 3.8 over HTTP against a real authmount process.

Every hostile login must complete (client timeouts), answer 4xx (never 5xx) with
``Content-Type: application/json`` exactly and ``{"errors": [...]}``, and issue no token.
Embedded key URLs (``jku``/``x5u``) point at a loopback listener that must see zero
connections. At the end the captured server log must contain none of the raw JWTs or
client tokens this module used. Config/role endpoints refuse unprivileged tokens with 403.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.e2e.jsonserver import JSONServer
from tests.e2e.serverproc import ServerProc, start_server
from tests.plugin.keyfactory import (
    DROP,
    KeyPair,
    b64url,
    default_claims,
    ec_key,
    jwks,
    make_token,
    rsa_key,
    self_signed_cert_pem,
)

pytestmark = pytest.mark.e2e

RSA = rsa_key(kid="rsa-1", slot=11)
EC = ec_key(kid="ec-1")
P384 = ec_key(kid="p384-1", crv="P-384")
ATTACKER = rsa_key(kid="rsa-1", slot=12)  # same kid as the real key, different key
ISS = "https://idp.example.com"
TIMEOUT = 30
#: Every raw JWT and client token sent or received here; none may appear in the server log.
SECRETS: set[str] = set()


class CountingListener:
    """A loopback TCP listener that only counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def url(self, path: str = "/keys") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


class JWKSServer:
    """Serves the real key set at ``/jwks`` and records every path requested."""

    def __init__(self) -> None:
        self._server = JSONServer(lambda path: jwks(RSA, EC, P384))
        self.paths = self._server.paths
        self.url = f"http://127.0.0.1:{self._server.port}/jwks"

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def trap() -> Iterator[CountingListener]:
    listener = CountingListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def keys() -> Iterator[JWKSServer]:
    server = JWKSServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, keys: JWKSServer) -> Iterator[ServerProc]:
    # Hundreds of hostile logins from one IP: the per-IP login limit (default 50/s) would
    # answer 429 before the checks under test run (test_ratelimit.py covers the limit).
    config = {"storage": {"type": "memory"}, "log_level": "debug", "log_format": "json",
              "rate_limit": {"login_per_ip_per_second": 0}}
    with start_server(config=config, workdir=tmp_path_factory.mktemp("attacks")) as srv:
        assert srv.root_token
        SECRETS.add(srv.root_token)
        hdr = {"X-Vault-Token": srv.root_token}

        def write(path: str, body: dict[str, Any]) -> None:
            resp = requests.post(f"{srv.url}/v1/{path}", json=body, headers=hdr, timeout=TIMEOUT)
            assert resp.status_code in (200, 204), (path, resp.text)

        write("sys/auth/jwt", {"type": "jwt"})
        write("auth/jwt/config", {"jwks_url": keys.url, "bound_issuer": ISS,
                                  "jwt_supported_algs": ["RS256", "ES256", "ES384"]})
        role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"], "token_policies": ["p"]}
        write("auth/jwt/role/r", role)
        write("auth/jwt/role/cidr", {**role, "token_bound_cidrs": ["127.0.0.42/32"]})
        write("auth/jwt/role/web", {"role_type": "oidc", "user_claim": "sub", "bound_audiences": ["vault"],
                                    "allowed_redirect_uris": ["http://localhost:8250/oidc/callback"]})
        write("sys/policy/role-reader", {"policy": 'path "auth/jwt/role/*" { capabilities = ["read"] }'})
        yield srv
    assert srv.returncode == 0


def url(srv: ServerProc, path: str) -> str:
    return f"{srv.url}/v1/{path}"


def root_headers(srv: ServerProc) -> dict[str, str]:
    return {"X-Vault-Token": str(srv.root_token)}


def assert_refused(resp: requests.Response, statuses: tuple[int, ...] = ()) -> list[str]:
    """A 4xx Vault error envelope with the exact JSON content type and no token in it."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    if statuses:
        assert resp.status_code in statuses, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert set(body) == {"errors"}, body
    assert isinstance(body["errors"], list) and all(isinstance(e, str) for e in body["errors"])
    if resp.status_code != 404:
        assert body["errors"], body
    return list(body["errors"])


def login(srv: ServerProc, body: Any, *, content_type: str | None = None, headers: dict[str, str] | None = None,
          mount: str = "jwt") -> requests.Response:
    """POST ``auth/<mount>/login``; ``body`` is a JSON-able object or raw bytes."""
    hdrs = dict(headers or {})
    if isinstance(body, bytes):
        data = body
        hdrs["Content-Type"] = content_type or "application/json"
    else:
        if isinstance(body, dict) and isinstance(body.get("jwt"), str):
            SECRETS.add(body["jwt"])
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = content_type or "application/json"
    return requests.post(url(srv, f"auth/{mount}/login"), data=data, headers=hdrs, timeout=TIMEOUT)


# -- token builders ----------------------------------------------------------------------
def claims(**kw: Any) -> dict[str, Any]:
    return default_claims(**kw)


def good(**kw: Any) -> str:
    return make_token(claims(**kw), key=RSA)


def signed_payload(payload: bytes, *, key: KeyPair = RSA, raw_header: bytes | None = None) -> str:
    """A real-key signature over arbitrary payload bytes (only the payload is hostile)."""
    return make_token(payload, key=key, raw_header=raw_header)


def payload_with(extra: str) -> bytes:
    """A valid claim set's JSON with ``extra`` members spliced in raw (for NaN, dup keys ...)."""
    base = json.dumps(claims())[:-1]
    return (base + ", " + extra + "}").encode()


def without(*names: str) -> dict[str, Any]:
    return claims(**{n: DROP for n in names})


def mangle_payload(token: str, fn: Callable[[str], str]) -> str:
    h, p, s = token.split(".")
    return ".".join((h, fn(p), s))


def sig_of(token: str) -> bytes:
    s = token.split(".")[2]
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def strings_in(value: Any) -> list[str]:
    """The JWT-like strings inside a field value (str, list or object), for echo checks."""
    if isinstance(value, str):
        return [value] if len(value) > 20 else []
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    return []


def hs(secret: bytes | str, alg: str = "HS256") -> str:
    return make_token(claims(), key=secret, alg=alg, kid="rsa-1")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def jwe(header: dict[str, Any]) -> str:
    parts = [json.dumps(header).encode(), b"k" * 32, b"i" * 12, b"c" * 40, b"t" * 16]
    return ".".join(b64url(p) for p in parts)


CERT_DER_B64 = base64.b64encode(
    base64.b64decode("".join(self_signed_cert_pem(ATTACKER).splitlines()[1:-1]))
).decode()

# (id, builder returning the jwt string). Listener URLs are filled in by the test.
TOKENS: list[tuple[str, Callable[[str], Any]]] = [
    # 2.1 algorithm
    ("alg none", lambda t: make_token(claims(), alg="none")),
    ("alg None signed", lambda t: make_token(claims(), alg="None", signature=b"x")),
    ("alg NONE", lambda t: make_token(claims(), alg="NONE")),
    ("alg nOnE signed", lambda t: make_token(claims(), alg="nOnE", signature=b"sig")),
    ("alg missing", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": DROP})),
    ("alg empty", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": ""})),
    ("alg null", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": None})),
    ("alg 123", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": 123})),
    ("alg list", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": ["RS256"]})),
    ("alg object", lambda t: make_token(claims(), key=RSA, header_overrides={"alg": {"a": 1}})),
    ("HS256 with PEM", lambda t: hs(RSA.pem)),
    ("HS384 with PEM", lambda t: hs(RSA.pem, "HS384")),
    ("HS512 with PEM", lambda t: hs(RSA.pem, "HS512")),
    ("HS256 PEM no newline", lambda t: hs(RSA.pem.rstrip("\n"))),
    ("HS256 PEM CRLF", lambda t: hs(RSA.pem.replace("\n", "\r\n"))),
    ("HS256 DER", lambda t: hs(RSA.der)),
    ("HS256 JWK JSON", lambda t: hs(json.dumps(RSA.jwk()))),
    ("HS256 n", lambda t: hs(RSA.jwk()["n"])),
    ("HS256 AQAB", lambda t: hs("AQAB")),
    ("HS256 empty key", lambda t: hs(b"")),
    ("RS512 header SHA-256 sig", lambda t: make_token(claims(), key=RSA, alg="RS512", signature=sig_of(good()))),
    ("PS256 not allowed", lambda t: make_token(claims(), key=RSA, alg="PS256")),
    ("ES256 header P-384 key", lambda t: make_token(claims(), key=P384, alg="ES256")),
    # 2.2 kid and embedded keys
    ("kid dev null", lambda t: make_token(claims(), key=ATTACKER, kid="../../../../dev/null")),
    ("kid etc passwd", lambda t: make_token(claims(), key=ATTACKER, kid="/etc/passwd")),
    ("kid sql", lambda t: make_token(claims(), key=ATTACKER, kid="x' UNION SELECT 'k'--")),
    ("kid percent nul", lambda t: make_token(claims(), key=ATTACKER, kid="%00")),
    ("kid 10KB", lambda t: make_token(claims(), key=ATTACKER, kid="k" * 10240)),
    ("kid integer", lambda t: make_token(claims(), key=ATTACKER, kid=5)),
    ("kid null", lambda t: make_token(claims(), key=ATTACKER, header_overrides={"kid": None})),
    ("kid unknown", lambda t: make_token(claims(), key=ATTACKER, kid="never-published")),
    ("jku", lambda t: make_token(claims(), key=ATTACKER, header_overrides={"jku": t})),
    ("jku metadata", lambda t: make_token(claims(), key=ATTACKER,
                                          header_overrides={"jku": "http://169.254.169.254/latest/meta-data/"})),
    ("x5u", lambda t: make_token(claims(), key=ATTACKER, header_overrides={"x5u": t})),
    ("jwk embedded", lambda t: make_token(claims(), key=ATTACKER, header_overrides={"jwk": ATTACKER.jwk()})),
    ("x5c self-signed", lambda t: make_token(claims(), key=ATTACKER, header_overrides={"x5c": [CERT_DER_B64]})),
    ("jku no kid", lambda t: make_token(claims(), key=ATTACKER, kid=DROP, header_overrides={"jku": t, "x5u": t})),
    ("crit exp", lambda t: make_token(claims(), key=RSA, header_overrides={"crit": ["exp"]})),
    ("crit unknown", lambda t: make_token(claims(), key=RSA, header_overrides={"crit": ["http://x"], "http://x": 1})),
    ("crit empty", lambda t: make_token(claims(), key=RSA, header_overrides={"crit": []})),
    ("crit string", lambda t: make_token(claims(), key=RSA, header_overrides={"crit": "b64"})),
    ("crit b64 false", lambda t: make_token(claims(), key=RSA, header_overrides={"crit": ["b64"], "b64": False})),
    # 2.3 structure and encoding
    ("empty", lambda t: ""),
    ("dot", lambda t: "."),
    ("two dots", lambda t: ".."),
    ("two parts", lambda t: "a.b"),
    ("four parts", lambda t: "a.b.c.d"),
    ("JWE RSA-OAEP", lambda t: jwe({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "rsa-1"})),
    ("JWE dir zip", lambda t: jwe({"alg": "dir", "enc": "A256GCM", "zip": "DEF"})),
    ("JSON serialization", lambda t: json.dumps(dict(zip(("protected", "payload", "signature"), good().split("."), strict=True)))),
    ("b64 bang", lambda t: mangle_payload(good(), lambda p: p[:10] + "!" + p[11:])),
    ("b64 dollar", lambda t: mangle_payload(good(), lambda p: p[:10] + "$" + p[11:])),
    ("b64 percent", lambda t: mangle_payload(good(), lambda p: p[:10] + "%" + p[11:])),
    ("b64 plus", lambda t: mangle_payload(good(), lambda p: p[:10] + "+" + p[11:])),
    ("b64 slash", lambda t: mangle_payload(good(), lambda p: p[:10] + "/" + p[11:])),
    ("b64 padding", lambda t: mangle_payload(good(), lambda p: p + "=" * (-len(p) % 4 or 4))),
    ("b64 space", lambda t: mangle_payload(good(), lambda p: p[:10] + " " + p[10:])),
    ("b64 newline", lambda t: mangle_payload(good(), lambda p: p[:10] + "\r\n" + p[10:])),
    ("b64 tab", lambda t: mangle_payload(good(), lambda p: p[:10] + "\t" + p[10:])),
    ("b64 len mod 4 is 1", lambda t: mangle_payload(good(), lambda p: p + "A" * ((1 - len(p)) % 4))),
    ("non-ascii", lambda t: mangle_payload(good(), lambda p: p[:10] + "é" + p[10:])),
    ("header not utf-8", lambda t: make_token(claims(), key=RSA, raw_header=b'{"alg":"RS256","x":"\xff\xfe"}')),
    ("payload overlong utf-8", lambda t: signed_payload(b'{"sub":"\xc0\xaf"}')),
    ("header is list", lambda t: make_token(claims(), key=RSA, raw_header=b"[]")),
    ("header is string", lambda t: make_token(claims(), key=RSA, raw_header=b'"str"')),
    ("header is null", lambda t: make_token(claims(), key=RSA, raw_header=b"null")),
    ("payload is 1", lambda t: signed_payload(b"1")),
    ("empty signature", lambda t: good().rsplit(".", 1)[0] + "."),
    ("short signature", lambda t: good()[:-10]),
    # 2.4 JSON parsing
    ("dup header alg", lambda t: make_token(claims(), key=RSA,
                                            raw_header=b'{"alg":"HS256","alg":"RS256","kid":"rsa-1"}')),
    ("dup claim sub", lambda t: signed_payload(payload_with('"sub": "admin"'))),
    ("dup claim aud", lambda t: signed_payload(payload_with('"aud": "vault"'))),
    ("NaN claim", lambda t: signed_payload(payload_with('"x": NaN'))),
    ("Infinity claim", lambda t: signed_payload(payload_with('"x": -Infinity'))),
    ("1e400 claim", lambda t: signed_payload(payload_with('"x": 1e400'))),
    ("lone surrogate", lambda t: signed_payload(payload_with('"name": "\\ud800"'))),
    ("deep header", lambda t: make_token(claims(), key=RSA, raw_header=nested(5000))),
    ("deep payload", lambda t: signed_payload(payload_with('"x": ' + nested(5000).decode()))),
    ("deep payload over cap", lambda t: signed_payload(payload_with('"x": ' + nested(100_000).decode()))),
    ("SUB casefold", lambda t: make_token(claims(SUB="admin"), key=RSA)),
    ("long s sub", lambda t: make_token(claims(**{"\u017fub": "admin"}), key=RSA)),
    ("Exp casefold", lambda t: make_token(claims(Exp=1), key=RSA)),
    # 2.5 time claims
    ("no time claims", lambda t: make_token(without("exp", "nbf", "iat"), key=RSA)),
    ("expired", lambda t: make_token(claims(exp=int(time.time()) - 1000, iat=int(time.time()) - 2000,
                                            nbf=int(time.time()) - 2000), key=RSA)),
    ("nbf future", lambda t: make_token(claims(nbf=int(time.time()) + 1000), key=RSA)),
    ("iat future", lambda t: make_token(claims(iat=int(time.time()) + 1000), key=RSA)),
    ("exp string", lambda t: make_token(claims(exp="9999999999"), key=RSA)),
    ("exp spaced string", lambda t: make_token(claims(exp=" 1 "), key=RSA)),
    ("exp underscore", lambda t: make_token(claims(exp="1_0"), key=RSA)),
    ("exp true", lambda t: make_token(claims(exp=True), key=RSA)),
    ("exp null", lambda t: make_token(claims(exp=None), key=RSA)),
    ("exp list", lambda t: make_token(claims(exp=[]), key=RSA)),
    ("exp object", lambda t: make_token(claims(exp={}), key=RSA)),
    ("exp 1e400", lambda t: signed_payload(json.dumps(without("exp"))[:-1].encode() + b', "exp": 1e400}')),
    ("exp NaN", lambda t: signed_payload(json.dumps(without("exp"))[:-1].encode() + b', "exp": NaN}')),
    ("nbf Infinity", lambda t: signed_payload(json.dumps(without("nbf"))[:-1].encode() + b', "nbf": Infinity}')),
    # 2.6 identity claims
    ("aud absent", lambda t: make_token(without("aud"), key=RSA)),
    ("aud empty list", lambda t: make_token(claims(aud=[]), key=RSA)),
    ("aud empty string", lambda t: make_token(claims(aud=""), key=RSA)),
    ("aud trailing slash", lambda t: make_token(claims(aud="vault/"), key=RSA)),
    ("aud case", lambda t: make_token(claims(aud="VAULT"), key=RSA)),
    ("aud number list", lambda t: make_token(claims(aud=[1]), key=RSA)),
    ("aud nested list", lambda t: make_token(claims(aud=[["vault"]]), key=RSA)),
    ("iss trailing slash", lambda t: make_token(claims(iss=ISS + "/"), key=RSA)),
    ("iss absent", lambda t: make_token(without("iss"), key=RSA)),
    ("iss number", lambda t: make_token(claims(iss=5), key=RSA)),
    ("sub number", lambda t: make_token(claims(sub=5), key=RSA)),
    ("sub list", lambda t: make_token(claims(sub=["a"]), key=RSA)),
    ("sub null", lambda t: make_token(claims(sub=None), key=RSA)),
    ("sub missing", lambda t: make_token(without("sub"), key=RSA)),
    # 2.7 signature cryptography
    ("ES256 r=0 s=0", lambda t: make_token(claims(), key=EC, signature=b"\x00" * 64)),
    ("ES256 DER signature", lambda t: make_token(claims(), key=EC, signature=b"0D" + b"\x02\x20" + b"\x01" * 32
                                                 + b"\x02\x20" + b"\x01" * 32)),
    ("ES256 63 bytes", lambda t: make_token(claims(), key=EC, signature=sig_of(make_token(claims(), key=EC))[:63])),
    ("RSA sig leading 00", lambda t: make_token(claims(), key=RSA, signature=b"\x00" + sig_of(good()))),
    ("RSA sig truncated", lambda t: make_token(claims(), key=RSA, signature=sig_of(good())[:-1])),
    ("RSA sig too long", lambda t: make_token(claims(), key=RSA, signature=sig_of(good()) + b"\x01")),
    # 2.8 size
    ("1 MB junk", lambda t: "a" * 1_000_000),
    ("1 MB token", lambda t: make_token(claims(pad="p" * 700_000), key=RSA)),
    # wrong types for the jwt field itself
    ("jwt number", lambda t: 5),
    ("jwt list", lambda t: [good()]),
    ("jwt object", lambda t: {"jwt": good()}),
    ("jwt bool", lambda t: True),
    ("jwt null", lambda t: None),
]


@pytest.fixture(scope="module")
def baseline(vault: ServerProc) -> list[str]:
    """A valid login works (so refusals below are about the attack), and the accessor list."""
    resp = login(vault, {"role": "r", "jwt": good()})
    assert resp.status_code == 200, resp.text
    SECRETS.add(resp.json()["auth"]["client_token"])
    listing = requests.request("LIST", url(vault, "auth/token/accessors"), headers=root_headers(vault), timeout=TIMEOUT)
    assert listing.status_code == 200, listing.text
    return sorted(listing.json()["data"]["keys"])


@pytest.mark.parametrize("build", [b for _, b in TOKENS], ids=[i for i, _ in TOKENS])
def test_hostile_jwt_is_refused(
    vault: ServerProc, trap: CountingListener, baseline: list[str], build: Callable[[str], Any]
) -> None:
    token = build(trap.url())
    errors = assert_refused(login(vault, {"role": "r", "jwt": token}), (400,))
    for text in strings_in(token):  # never echoed, whatever the field's shape
        assert not any(text in e for e in errors), errors


@pytest.mark.parametrize(
    ("value", "statuses"),
    [("1e20", (200, 400)), (str(2**64), (200, 400)), ("1700000000.9", (400,)), ("-1", (400,))],
    ids=["1e20", "2**64", "float in the past", "negative"],
)
def test_out_of_range_exp_never_crashes(vault: ServerProc, value: str, statuses: tuple[int, ...]) -> None:
    """docs/reference/security.md 2.5: far-future ``exp`` may be accepted or refused, but never a 5xx."""
    token = signed_payload(json.dumps(without("exp"))[:-1].encode() + f', "exp": {value}}}'.encode())
    resp = login(vault, {"role": "r", "jwt": token})
    assert resp.status_code in statuses, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    if resp.status_code == 200:
        auth = resp.json()["auth"]
        SECRETS.add(auth["client_token"])
        assert auth["lease_duration"] <= 768 * 3600  # the TTL comes from the role, never from exp
        requests.post(url(vault, "auth/token/revoke-self"), headers={"X-Vault-Token": auth["client_token"]},
                      timeout=TIMEOUT)
    else:
        assert_refused(resp)


def _bodies() -> list[tuple[str, Any, str | None, tuple[int, ...]]]:
    deep = b'{"role": "r", "jwt": "a.b.c", "x": ' + nested(10_000) + b"}"
    many = json.dumps({"role": "r", "jwt": "a.b.c", **{f"{i}": 1 for i in range(70_000)}}).encode()
    return [
        ("jwt missing", {"role": "r"}, None, (400,)),
        ("role number", {"role": 5, "jwt": "a.b.c"}, None, (400,)),
        ("role list", {"role": ["r"], "jwt": "a.b.c"}, None, (400,)),
        ("role object", {"role": {"r": 1}, "jwt": "a.b.c"}, None, (400,)),
        ("role bool", {"role": True, "jwt": "a.b.c"}, None, (400,)),
        ("role unknown", {"role": "nope", "jwt": "a.b.c"}, None, (400,)),
        ("role missing", {"jwt": "a.b.c"}, None, (400,)),
        ("role traversal", {"role": "../r", "jwt": "a.b.c"}, None, (400,)),
        ("role encoded slash", {"role": "%2fr", "jwt": "a.b.c"}, None, (400,)),
        ("role log injection", {"role": 'x\r\n{"event": "forged"}', "jwt": "a.b.c"}, None, (400,)),
        ("body truncated", b'{"role": "r", "jwt": ', None, (400,)),
        ("body list", b'["r"]', None, (400,)),
        ("body null", b"null", None, (400,)),
        ("body string", b'"r"', None, (400,)),
        ("body number", b"1", None, (400,)),
        ("body not utf-8", b"\xff\xfe{}", None, (400,)),
        ("body NaN", b'{"role": "r", "jwt": NaN}', None, (400,)),
        ("body deep", deep, None, (400,)),
        ("body 70k keys", many, None, (400,)),
        ("form body", b"role=r&jwt=a.b.c", "application/x-www-form-urlencoded", (400,)),
        ("form body junk", b"role=%ff%fe&jwt=%zz", "application/x-www-form-urlencoded", (400,)),
        ("multipart body", b"--x\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nr\r\n--x--\r\n",
         "multipart/form-data; boundary=x", (400,)),
        ("oversized body", b'{"role": "r", "jwt": "' + b"a" * (2 << 20) + b'"}', None, (413,)),
    ]


BODIES = _bodies()


@pytest.mark.parametrize(("body", "ctype", "statuses"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES])
def test_hostile_body_is_refused(vault: ServerProc, baseline: list[str], body: Any, ctype: str | None,
                                 statuses: tuple[int, ...]) -> None:
    assert_refused(login(vault, body, content_type=ctype), statuses)


def test_slow_body_is_cut_off(vault: ServerProc) -> None:
    """docs/reference/security.md 2.8: a body trickled at 1 byte/s gets a 408 JSON error, not a held handler."""
    host, port = vault.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /v1/auth/jwt/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        sock.settimeout(1.0)
        answer = b""
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            assert time.monotonic() < deadline, "the server held the trickling request"
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b" ")  # one more byte per second, never finishing
                continue
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n"
    assert json.loads(body)["errors"] == ["request body not received in time"]


def test_oidc_role_cannot_login(vault: ServerProc, baseline: list[str]) -> None:
    errors = assert_refused(login(vault, {"role": "web", "jwt": good()}), (400,))
    assert any("oidc" in e for e in errors), errors


@pytest.mark.parametrize("xff", [None, "127.0.0.42"], ids=["direct", "spoofed x-forwarded-for"])
def test_bound_cidr_refuses_valid_jwt(vault: ServerProc, baseline: list[str], xff: str | None) -> None:
    headers = {"X-Forwarded-For": xff} if xff else None
    errors = assert_refused(login(vault, {"role": "cidr", "jwt": good()}, headers=headers), (403,))
    assert errors == ["permission denied"]


@pytest.mark.parametrize("path", ["auth/jwt/role/..%2fconfig", "auth/jwt/role/a%00b", "auth/jwt/role/-r",
                                  "auth/jwt/role/r%0d%0ax"], ids=["traversal", "nul", "leading dash", "crlf"])
def test_hostile_role_paths(vault: ServerProc, path: str) -> None:
    resp = requests.get(url(vault, path), headers=root_headers(vault), timeout=TIMEOUT)
    assert_refused(resp, (400, 404))


def test_uppercase_role_path_is_lowercased(vault: ServerProc) -> None:
    """docs/reference/vault-api.md 1.1: role names are lower-cased, so ``role/R`` is role ``r``, not another role."""
    upper = requests.get(url(vault, "auth/jwt/role/R"), headers=root_headers(vault), timeout=TIMEOUT)
    lower = requests.get(url(vault, "auth/jwt/role/r"), headers=root_headers(vault), timeout=TIMEOUT)
    assert upper.status_code == lower.status_code == 200
    assert upper.json()["data"] == lower.json()["data"]


@pytest.mark.parametrize("policy", [" root", "Root", "ROOT", "root ", "root"], ids=repr)
def test_role_cannot_grant_root(vault: ServerProc, baseline: list[str], policy: str) -> None:
    """docs/reference/security.md 3.8 / HCSEC-2025-13: no spelling of ``root`` on a role yields a root token."""
    resp = requests.post(url(vault, "auth/jwt/role/rootish"), headers=root_headers(vault), timeout=TIMEOUT,
                         json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                               "token_policies": [policy]})
    if resp.status_code == 400:  # refusing the role write is fine too
        assert_refused(resp)
        return
    assert resp.status_code == 204, resp.text
    errors = assert_refused(login(vault, {"role": "rootish", "jwt": good()}), (400,))
    assert errors == ["auth methods cannot create root tokens"]


def test_no_token_was_issued(vault: ServerProc, baseline: list[str]) -> None:
    listing = requests.request("LIST", url(vault, "auth/token/accessors"), headers=root_headers(vault), timeout=TIMEOUT)
    assert sorted(listing.json()["data"]["keys"]) == baseline


def test_random_kid_flood_refreshes_at_most_once(vault: ServerProc, keys: JWKSServer, baseline: list[str]) -> None:
    """docs/reference/security.md 2.2: unknown kids cannot force one JWKS fetch each (single flight + cooldown)."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    before = len(keys.paths)
    tokens = [make_token(claims(), key=ATTACKER, kid=uuid.uuid4().hex) for _ in range(60)]
    with ThreadPoolExecutor(12) as pool:
        resps = list(pool.map(lambda t: login(vault, {"role": "r", "jwt": t}), tokens))
    for resp in resps:
        assert_refused(resp, (400,))
    assert len(keys.paths) - before <= 1


def test_embedded_urls_never_contacted(keys: JWKSServer, trap: CountingListener) -> None:
    assert trap.connections == 0
    assert set(keys.paths) <= {"/jwks"}
    # unknown kids force at most a few refreshes (single flight + cooldown), not one per request
    assert len(keys.paths) <= 4, keys.paths


# -- 2.9: the JWKS endpoint is hostile or broken -----------------------------------------
JUNK = b"It's not a keyset! secret-looking-body-1234"


def _gzip_bomb(size: int = 200 << 20) -> bytes:
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    zeros = b"\0" * (1 << 20)
    return b"".join(comp.compress(zeros) for _ in range(size >> 20)) + comp.flush()


class HostileJWKS:
    """One path per misbehaviour; ``/flaky`` serves the real keys until ``broken`` is set."""

    def __init__(self, trap: CountingListener) -> None:
        self.broken = False
        self.bomb = _gzip_bomb()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                mode = self.path.strip("/")
                good = json.dumps(jwks(RSA)).encode()
                answers: dict[str, tuple[int, bytes, str]] = {
                    "junk": (200, JUNK, "text/plain"),
                    "empty-object": (200, b"{}", "application/json"),
                    "keys-string": (200, b'{"keys": "x"}', "application/json"),
                    "keys-empty": (200, b'{"keys": []}', "application/json"),
                    "html": (200, b"<html><body>" + JUNK + b"</body></html>", "text/html"),
                    "array": (200, b"[1, 2]", "application/json"),
                    "404": (404, JUNK, "text/plain"),
                    "500": (500, JUNK, "text/plain"),
                    "only-bad-keys": (200, json.dumps({"keys": [
                        {"kty": "oct", "k": b64url(b"k" * 32), "kid": "o"},
                        {**RSA.jwk(), "use": "enc", "kid": "enc"},
                        {**RSA.jwk(), "d": "AQAB", "kid": "private"},
                        {"kid": "no-kty", "n": "AQAB", "e": "AQAB"},
                        {**rsa_key(bits=1024, slot=13).jwk(), "kid": "small"},
                    ]}).encode(), "application/json"),
                }
                if mode in answers:
                    self.send(*answers[mode])
                elif mode == "flaky":
                    self.send(*((500, JUNK, "text/plain") if outer.broken else (200, good, "application/json")))
                elif mode == "redirect-trap":
                    self.send(302, b"", Location=trap.url("/jwks"))
                elif mode == "redirect-metadata":
                    self.send(302, b"", Location="http://169.254.169.254/latest/meta-data/")
                elif mode == "redirect-file":
                    self.send(302, b"", Location="file:///etc/passwd")
                elif mode == "huge":
                    self.send(200, b'{"keys": [' + b" " * (2 << 20) + b"]}")
                elif mode == "gzip-bomb":
                    self.send(200, outer.bomb, Content_Encoding="gzip")
                elif mode == "endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b" " * 65536
                    try:
                        for _ in range(2000):  # 128 MiB at most, unless the client hangs up first
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except OSError:
                        pass
                elif mode == "slow":
                    time.sleep(12)
                    self.send(200, good)
                else:
                    self.send(404, b"")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # resets are expected
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def hostile(trap: CountingListener) -> Iterator[HostileJWKS]:
    server = HostileJWKS(trap)
    yield server
    server.close()


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


HOSTILE_MODES = ["junk", "empty-object", "keys-string", "keys-empty", "html", "array", "404", "500",
                 "only-bad-keys", "redirect-trap", "redirect-metadata", "redirect-file", "huge", "gzip-bomb",
                 "endless", "slow"]


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_hostile_jwks_endpoint_fails_config_write_cleanly(vault: ServerProc, hostile: HostileJWKS, mode: str) -> None:
    """A JWKS URL that misbehaves is refused at config time with a 400 that does not echo the
    endpoint's body; redirects to other hosts are not followed; big bodies are capped."""
    path = f"hostile-{mode}"
    hdr = root_headers(vault)
    enabled = requests.post(url(vault, f"sys/auth/{path}"), json={"type": "jwt"}, headers=hdr, timeout=TIMEOUT)
    assert enabled.status_code == 204
    peak_before = _peak_rss_kib(vault.proc.pid)
    resp = requests.post(url(vault, f"auth/{path}/config"), json={"jwks_url": f"{hostile.base}/{mode}"},
                         headers=hdr, timeout=TIMEOUT)
    errors = assert_refused(resp, (400,))
    assert not any("not a keyset" in e or "secret-looking" in e for e in errors), errors
    if mode == "gzip-bomb":  # 200 MiB inflated must not be held in memory
        assert _peak_rss_kib(vault.proc.pid) - peak_before < 64 * 1024
    assert requests.get(url(vault, f"auth/{path}/config"), headers=hdr, timeout=TIMEOUT).status_code == 404


def test_broken_jwks_keeps_last_good_keys(vault: ServerProc, hostile: HostileJWKS) -> None:
    hdr = root_headers(vault)
    requests.post(url(vault, "sys/auth/flaky"), json={"type": "jwt"}, headers=hdr, timeout=TIMEOUT)
    resp = requests.post(url(vault, "auth/flaky/config"), json={"jwks_url": f"{hostile.base}/flaky"},
                         headers=hdr, timeout=TIMEOUT)
    assert resp.status_code == 204, resp.text
    requests.post(url(vault, "auth/flaky/role/r"), headers=hdr, timeout=TIMEOUT,
                  json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"]})
    first = login(vault, {"role": "r", "jwt": good()}, mount="flaky")
    assert first.status_code == 200, first.text
    SECRETS.add(first.json()["auth"]["client_token"])
    hostile.broken = True
    unknown = login(vault, {"role": "r", "jwt": make_token(claims(), key=ATTACKER, kid="rotated")}, mount="flaky")
    errors = assert_refused(unknown, (400,))
    assert not any("secret-looking" in e for e in errors)
    again = login(vault, {"role": "r", "jwt": good()}, mount="flaky")  # cached keys still verify
    assert again.status_code == 200, again.text
    SECRETS.add(again.json()["auth"]["client_token"])


# -- 3.8: config and role endpoints need a privileged token ------------------------------
def _token(vault: ServerProc, **body: Any) -> str:
    resp = requests.post(url(vault, "auth/token/create"), json=body, headers=root_headers(vault), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    token = str(resp.json()["auth"]["client_token"])
    SECRETS.add(token)
    return token


@pytest.fixture(scope="module")
def unprivileged(vault: ServerProc) -> dict[str, str | None]:
    """Tokens that must not reach config/role endpoints, keyed by kind."""
    expired = _token(vault, ttl="1s", policies=["role-reader"])
    exhausted = _token(vault, num_uses=1, policies=["role-reader"])
    first = requests.get(url(vault, "auth/jwt/role/r"), headers={"X-Vault-Token": exhausted}, timeout=TIMEOUT)
    assert first.status_code == 200, first.text  # its single use
    resp = login(vault, {"role": "r", "jwt": good()})
    login_token = resp.json()["auth"]["client_token"]
    SECRETS.add(login_token)
    time.sleep(2.1)  # let the 1s token expire
    return {"none": None, "bad": "hvs.AAAAAAAAAAAAAAAAAAAAAAAA", "expired": expired,
            "exhausted": exhausted, "login without policy": login_token}


ENDPOINTS = [("GET", "auth/jwt/config"), ("POST", "auth/jwt/config"), ("GET", "auth/jwt/role/r"),
             ("POST", "auth/jwt/role/x"), ("DELETE", "auth/jwt/role/r"), ("LIST", "auth/jwt/role"),
             ("GET", "auth/jwt/role/r/explain"), ("POST", "sys/auth/evil"), ("POST", "sys/policy/evil")]
KINDS = ["none", "bad", "expired", "exhausted", "login without policy"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_privileged_endpoints_refuse(vault: ServerProc, unprivileged: dict[str, str | None], kind: str,
                                     method: str, path: str) -> None:
    token = unprivileged[kind]
    headers = {"X-Vault-Token": token} if token else {}
    body = {"jwks_url": "http://127.0.0.1:1/x", "type": "jwt", "policy": 'path "*" { capabilities = ["sudo"] }',
            "user_claim": "sub"} if method == "POST" else None
    resp = requests.request(method, url(vault, path), json=body, headers=headers, timeout=TIMEOUT)
    if kind == "login without policy" and method == "GET" and path == "auth/jwt/role/r":
        assert resp.status_code == 403  # the login role grants only "p", which does not exist
    assert assert_refused(resp, (403,)) == ["permission denied"]


def test_state_unchanged_after_refusals(vault: ServerProc, keys: JWKSServer) -> None:
    hdr = root_headers(vault)
    config = requests.get(url(vault, "auth/jwt/config"), headers=hdr, timeout=TIMEOUT).json()["data"]
    assert config["jwks_url"] == keys.url
    assert requests.get(url(vault, "auth/jwt/role/r"), headers=hdr, timeout=TIMEOUT).status_code == 200
    roles = requests.request("LIST", url(vault, "auth/jwt/role"), headers=hdr, timeout=TIMEOUT).json()["data"]["keys"]
    assert "x" not in roles
    mounts = requests.get(url(vault, "sys/auth"), headers=hdr, timeout=TIMEOUT).json()["data"]
    assert "evil/" not in mounts
    assert requests.get(url(vault, "sys/policy/evil"), headers=hdr, timeout=TIMEOUT).status_code == 404


def test_server_alive_and_log_has_no_secrets(vault: ServerProc) -> None:
    """Runs last: the process survived everything and never logged a JWT or client token."""
    assert vault.returncode is None
    assert requests.get(vault.url + "/v1/sys/health", timeout=TIMEOUT).status_code == 200
    log = vault.log_text()
    assert log.strip(), "the server log is empty: nothing was captured"
    assert "Traceback" not in log and "internal_error" not in log
    events = [json.loads(line)["event"] for line in log.splitlines()]  # one JSON object per line
    assert "forged" not in events and "login_failed" in events
    leaked = []
    for secret in SECRETS:
        if len(secret) < 16:
            continue
        needles = [secret]
        sig = secret.rsplit(".", 1)[-1]
        if "." in secret and len(sig) >= 24:
            needles.append(sig)
        if any(n in log for n in needles):
            leaked.append(secret[:40])
    assert not leaked, leaked
    # stdout carries the one-time banner with the root token, and nothing else secret
    stdout = vault.stdout_text()
    assert stdout.count(str(vault.root_token)) == 1
    assert not [s[:40] for s in SECRETS if len(s) >= 16 and s != vault.root_token and s in stdout]
    assert len(SECRETS) > 50  # the checks above really ran with the module's tokens
