"""docs/reference/security.md section 2 (2.1-2.4, 2.7-2.9) as regression tables at the parse/verify level.

Rate limiting and single flight of JWKS refreshes (2.2) are also covered in test_keys.py.
A "login" here is ``parse_token`` followed by ``KeySource.verify``; every rejection must be
an ``InvalidRequest`` starting with ``error validating token: `` that never echoes the
token, and nothing else may escape (no TypeError/RecursionError/OverflowError).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from plugin.errors import InvalidRequest, UpstreamError
from plugin.framework import FetchResult
from plugin.jose_verify import HMAC_ALGS, SUPPORTED_ALGS, keys_from_jwks, keys_from_pems, parse_token
from plugin.keys import KeySource, build_key_source
from tests.plugin.keyfactory import (
    DROP,
    FakeFetcher,
    KeyPair,
    b64url,
    default_claims,
    ec_key,
    ed25519_key,
    jwks,
    make_token,
    rsa_key,
)

JWKS_URL = "https://idp.example.com/certs"
ALL = list(SUPPORTED_ALGS)
ALL_AND_HMAC = ALL + list(HMAC_ALGS)  # "HS256 wrongly allowed": forgeries must still fail
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

RSA = rsa_key(kid="rsa-1")
EC = ec_key(kid="ec-1")
P384 = ec_key(crv="P-384")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def static_source(*keys: KeyPair) -> KeySource:
    return build_key_source({"jwt_validation_pubkeys": [k.pem for k in keys]}, FakeFetcher())


async def login(source: KeySource, token: object, allowed: list[str] = ALL) -> None:
    await source.verify(parse_token(token), allowed)


async def assert_rejected(source: KeySource, token: object, allowed: list[str] = ALL, match: str = "") -> str:
    """The token is refused with a clean 400 message that does not echo the token."""
    with pytest.raises(InvalidRequest) as exc:
        await login(source, token, allowed)
    msg = exc.value.messages[0]
    assert msg.startswith("error validating token: "), msg
    if isinstance(token, str) and len(token) > 20:
        assert token.strip() not in msg
    if match:
        assert match in msg, msg
    return msg


def with_parts(token: str, *, header: str | None = None, payload: str | None = None, sig: str | None = None) -> str:
    h, p, s = token.split(".")
    return ".".join((header if header is not None else h, payload if payload is not None else p, sig if sig is not None else s))


def sig_bytes(token: str) -> bytes:
    s = token.split(".")[2]
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# -- 2.1 Algorithm ---------------------------------------------------------------------

def _hs(secret: bytes | str, alg: str = "HS256") -> str:
    return make_token(default_claims(), key=secret, alg=alg, kid=DROP)


RSA_JWK = RSA.jwk()
ALG_CASES: list[tuple[str, Callable[[], str] | None, list[str], str]] = [
    ("alg none empty sig", lambda: make_token(default_claims(), alg="none"), ALL_AND_HMAC + ["none"], "signature is empty"),
    ("alg none with sig", lambda: make_token(default_claims(), alg="none", signature=b"x"), ALL_AND_HMAC + ["none"], "no known key"),
    ("alg None", lambda: make_token(default_claims(), alg="None", signature=b"x"), ALL, "unexpected algorithm"),
    ("alg NONE", lambda: make_token(default_claims(), alg="NONE"), ALL, "signature is empty"),
    ("alg NONE signed", lambda: make_token(default_claims(), alg="NONE", signature=b"abc"), ALL, "unexpected algorithm"),
    ("alg nOnE signed", lambda: make_token(default_claims(), alg="nOnE", signature=b"sig"), ALL, "unexpected algorithm"),
    ("alg missing", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": DROP}), ALL, "missing algorithm"),
    ("alg empty", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": ""}), ALL, "missing algorithm"),
    ("alg null", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": None}), ALL, "missing algorithm"),
    ("alg 123", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": 123}), ALL, "must be a string"),
    ("alg list", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": ["RS256"]}), ALL, "must be a string"),
    ("alg dict", lambda: make_token(default_claims(), key=RSA, header_overrides={"alg": {"a": 1}}), ALL, "must be a string"),
    ("HS256 with PEM", lambda: _hs(RSA.pem), ALL_AND_HMAC, "no known key"),
    ("HS384 with PEM", lambda: _hs(RSA.pem, "HS384"), ALL_AND_HMAC, "no known key"),
    ("HS512 with PEM", lambda: _hs(RSA.pem, "HS512"), ALL_AND_HMAC, "no known key"),
    ("HS256 PEM no newline", lambda: _hs(RSA.pem.rstrip("\n")), ALL_AND_HMAC, "no known key"),
    ("HS256 PEM CRLF", lambda: _hs(RSA.pem.replace("\n", "\r\n")), ALL_AND_HMAC, "no known key"),
    ("HS256 PKCS1 PEM", lambda: _hs(RSA.pkcs1_pem), ALL_AND_HMAC, "no known key"),
    ("HS256 DER", lambda: _hs(RSA.der), ALL_AND_HMAC, "no known key"),
    ("HS256 JWK JSON", lambda: _hs(json.dumps(RSA_JWK)), ALL_AND_HMAC, "no known key"),
    ("HS256 n", lambda: _hs(RSA_JWK["n"]), ALL_AND_HMAC, "no known key"),
    ("HS256 AQAB", lambda: _hs("AQAB"), ALL_AND_HMAC, "no known key"),
    ("HS256 kid", lambda: _hs("rsa-1"), ALL_AND_HMAC, "no known key"),
    ("HS256 empty key", lambda: _hs(b""), ALL_AND_HMAC, "no known key"),
    ("HS256 default algs", lambda: _hs(RSA.pem), ALL, "unexpected algorithm"),
    ("RS512 header, SHA-256 signature", lambda: make_token(default_claims(), key=RSA, alg="RS512",
        signature=sig_bytes(make_token(default_claims(), key=RSA))), ALL, "no known key"),
    ("ES256 outside allowed", lambda: make_token(default_claims(), key=EC), ["RS256"], "unexpected algorithm"),
    ("ES256 header, P-384 key", lambda: make_token(default_claims(), key=P384, alg="ES256"), ALL, "no known key"),
    ("ES384 with P-384 key is fine", None, ALL, ""),
]


@pytest.mark.parametrize(
    ("build", "allowed", "match"), [c[1:] for c in ALG_CASES], ids=[c[0] for c in ALG_CASES]
)
async def test_algorithm_attacks(build: Callable[[], str] | None, allowed: list[str], match: str) -> None:
    source = static_source(RSA, EC, P384)
    if build is None:  # control case: the same key with its own alg verifies
        await login(source, make_token(default_claims(), key=P384), allowed)
        return
    await assert_rejected(source, build(), allowed, match)


async def test_rs512_header_on_jwk_pinned_rs256() -> None:
    pinned = build_key_source({"jwks_url": JWKS_URL}, FakeFetcher({JWKS_URL: jwks(RSA.jwk(alg="RS256"))}))
    good = make_token(default_claims(), key=RSA)
    await login(pinned, good)
    forged = make_token(default_claims(), key=RSA, alg="RS512", signature=sig_bytes(good))
    await assert_rejected(pinned, forged, match="failed to verify id token signature")


async def test_es256_header_with_p384_jwk_without_alg() -> None:
    p384 = ec_key(kid="p", crv="P-384")
    src = build_key_source({"jwks_url": JWKS_URL}, FakeFetcher({JWKS_URL: jwks(p384)}))
    await login(src, make_token(default_claims(), key=p384))  # ES384 is fine
    await assert_rejected(src, make_token(default_claims(), key=p384, alg="ES256"))


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512", "EdDSA"])
async def test_ps_and_eddsa_are_implemented(alg: str) -> None:
    key = ed25519_key() if alg == "EdDSA" else rsa_key(alg=alg)
    await login(static_source(key), make_token(default_claims(), key=key))
    await assert_rejected(static_source(key), make_token(default_claims(), key=key), [a for a in ALL if a != alg])


async def test_hs_token_rejected_even_with_hmac_source_when_other_secret() -> None:
    src = build_key_source({"jwt_validation_hmac_secrets": ["k" * 32]}, FakeFetcher())
    await login(src, _hs("k" * 32), ["HS256"])
    for forged in (_hs(""), _hs("k" * 31), _hs(b"k" * 33)):
        await assert_rejected(src, forged, ["HS256"], "no known key")
    # An RS256 token cannot hit an HMAC key either.
    await assert_rejected(src, make_token(default_claims(), key=RSA), ["HS256", "RS256"], "no known key")


# -- 2.2 Keys, kid, embedded keys, rotation -------------------------------------------

def jwks_env(*keys: KeyPair | dict[str, Any]) -> tuple[KeySource, FakeFetcher, Clock]:
    clock = Clock()
    fetcher = FakeFetcher({JWKS_URL: jwks(*keys)})
    return build_key_source({"jwks_url": JWKS_URL}, fetcher, clock=clock), fetcher, clock


KIDS = [
    ("dev null", "../../../../dev/null", "failed to verify"),
    ("etc passwd", "/etc/passwd", "failed to verify"),
    ("sql", "x' UNION SELECT 'k'--", "failed to verify"),
    ("percent nul", "%00", "failed to verify"),
    ("real nul", "\x00", "failed to verify"),
    ("10KB", "k" * 10240, "kid) header parameter is longer"),
    ("integer", 5, "kid) header parameter must be a string"),
    ("null", None, "kid) header parameter must be a string"),
    ("list", ["ec-1"], "kid) header parameter must be a string"),
]


@pytest.mark.parametrize(("kid", "match"), [(k, m) for _, k, m in KIDS], ids=[i for i, _, _ in KIDS])
async def test_hostile_kids(kid: object, match: str) -> None:
    src, fetcher, _ = jwks_env(EC)
    attacker = ec_key()
    token = make_token(default_claims(), key=attacker, header_overrides={"kid": kid})
    await assert_rejected(src, token, match=match)
    assert {u for _, u, _ in fetcher.calls} <= {JWKS_URL}


EMBEDDED = [
    ("jwk", lambda k: {"jwk": k.jwk()}),
    ("jku", lambda k: {"jku": "http://169.254.169.254/latest/meta-data/"}),
    ("x5u", lambda k: {"x5u": "http://127.0.0.1:1/x5u"}),
    ("x5c", lambda k: {"x5c": ["MIIB" + "A" * 40]}),
    ("all", lambda k: {"jwk": k.jwk(), "jku": "http://127.0.0.1:1/", "x5u": "file:///etc/passwd"}),
]


@pytest.mark.parametrize("extra", [e for _, e in EMBEDDED], ids=[i for i, _ in EMBEDDED])
async def test_embedded_keys_and_urls_are_ignored(extra: Callable[[KeyPair], dict[str, Any]]) -> None:
    attacker = ec_key(kid="ec-1")  # even reusing a known kid
    for src, fetcher in ((static_source(EC), None), jwks_env(EC)[:2]):
        token = make_token(default_claims(), key=attacker, header_overrides=extra(attacker))
        await assert_rejected(src, token)
        if fetcher is not None:
            assert [u for _, u, _ in fetcher.calls] == [JWKS_URL]  # zero other URLs


CRIT = [
    ("crit exp", {"crit": ["exp"], "exp": 1}),
    ("crit url", {"crit": ["http://x"], "http://x": True}),
    ("crit empty", {"crit": []}),
    ("crit string", {"crit": "b64"}),
    ("crit b64 false", {"crit": ["b64"], "b64": False}),
    ("b64 alone", {"b64": True}),
]


@pytest.mark.parametrize("extra", [e for _, e in CRIT], ids=[i for i, _ in CRIT])
async def test_crit_and_b64_rejected(extra: dict[str, Any]) -> None:
    token = make_token(default_claims(), key=EC, header_overrides=extra)
    await assert_rejected(static_source(EC), token, match="unsupported header parameter")


async def test_rotated_out_key_rejected_and_last_good_kept() -> None:
    old, new = ec_key(kid="old"), ec_key(kid="new")
    src, fetcher, clock = jwks_env(old)
    await login(src, make_token(default_claims(), key=old))
    fetcher.routes[JWKS_URL] = jwks(new)
    clock.now += 20
    await login(src, make_token(default_claims(), key=new))  # unknown kid -> refresh
    await assert_rejected(src, make_token(default_claims(), key=old), match="failed to verify")
    fetcher.routes[JWKS_URL] = UpstreamError("connection refused")
    clock.now += 5000
    await login(src, make_token(default_claims(), key=new))  # stale, refresh fails in background
    await asyncio.sleep(0)
    await login(src, make_token(default_claims(), key=new))  # last good set still serves


def _jwk_variant(**members: Any) -> Callable[[KeyPair], dict[str, Any]]:
    return lambda k: k.jwk(**members)


BAD_JWKS: list[tuple[str, Callable[[], tuple[KeyPair | None, dict[str, Any]]]]] = [
    ("oct", lambda: (None, {"kty": "oct", "k": b64url(b"s" * 32), "kid": "bad"})),
    ("use enc", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(use="enc"))),
    ("key_ops encrypt", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(key_ops=["encrypt"]))),
    ("alg RSA-OAEP", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(alg="RSA-OAEP"))),
    ("private d", lambda: ((k := ec_key(kid="bad")), k.jwk(d=b64url(k.private.private_numbers().private_value.to_bytes(32, "big"))))),
    ("rsa 1024", lambda: ((k := rsa_key(kid="bad", bits=1024)), k.jwk())),
    ("off-curve", lambda: ((k := ec_key(kid="bad")), k.jwk(y=b64url((int.from_bytes(base64.urlsafe_b64decode(k.jwk()["y"] + "=="), "big") ^ 1).to_bytes(32, "big"))))),
    ("e=1", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(e="AQ"))),
    ("e even", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(e="AQAA"))),
    ("e > n", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(e=b64url(b"\xff" * 300)))),
    ("no kty", lambda: ((k := rsa_key(kid="bad", slot=2)), k.jwk(kty=DROP))),
    ("x wrong length", lambda: ((k := ec_key(kid="bad")), k.jwk(x=b64url(b"\x01" * 31)))),
    ("alg mismatching curve", lambda: ((k := ec_key(kid="bad", crv="P-384")), k.jwk(alg="ES256"))),
    ("not an object", lambda: (None, "RSA")),  # type: ignore[list-item, return-value]  # a JWK that is not an object
    ("kid not a string", lambda: ((k := ec_key()), k.jwk(kid=7))),
]


@pytest.mark.parametrize("case", [c for _, c in BAD_JWKS], ids=[i for i, _ in BAD_JWKS])
async def test_bad_jwks_keys_are_ignored(case: Callable[[], tuple[KeyPair | None, Any]]) -> None:
    bad_key, bad_jwk = case()
    good = ec_key(kid="good")
    assert keys_from_jwks({"keys": [bad_jwk]}) == []
    src, fetcher, _ = jwks_env(bad_jwk, good)
    await login(src, make_token(default_claims(), key=good))  # valid keys still work
    if bad_key is not None:
        kid = bad_jwk.get("kid") if isinstance(bad_jwk.get("kid"), str) else DROP
        await assert_rejected(src, make_token(default_claims(), key=bad_key, kid=kid))
    if isinstance(bad_jwk, dict):
        for value in list(bad_jwk.values()) + [json.dumps(bad_jwk)]:
            if isinstance(value, str):
                await assert_rejected(src, _hs(value), ALL_AND_HMAC)


async def test_two_keys_with_same_kid() -> None:
    a, b = ec_key(kid="same"), ec_key(kid="same")
    src, _, _ = jwks_env(a, b)
    await login(src, make_token(default_claims(), key=a))
    await login(src, make_token(default_claims(), key=b))
    await assert_rejected(src, make_token(default_claims(), key=ec_key(kid="same")))


# -- 2.3 Structure and encoding --------------------------------------------------------

GOOD = make_token(default_claims(), key=RSA, kid=DROP)
EC_GOOD = make_token(default_claims(), key=EC, kid=DROP)


def _flip_last(part: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return part[:-1] + alphabet[alphabet.index(part[-1]) ^ 1]


def _jws_json() -> str:
    h, p, s = GOOD.split(".")
    return json.dumps({"payload": p, "protected": h, "signature": s})


def _jwe() -> str:
    header = b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}))
    return ".".join([header, "AAAA", "AAAA", "AAAA", "AAAA"])


def _jwe_dir_zip() -> str:
    header = b64url(json.dumps({"alg": "dir", "enc": "A128CBC-HS256", "zip": "DEF"}))
    return ".".join([header, "", "AAAA", "AAAA", "AAAA"])


STRUCTURE: list[tuple[str, Callable[[], object], str]] = [
    ("empty", lambda: "", "token is empty"),
    ("whitespace only", lambda: " \n\t", "token is empty"),
    ("dot", lambda: ".", "found 2"),
    ("two dots", lambda: "..", "is empty"),
    ("a.b", lambda: "a.b", "found 2"),
    ("a.b.c.d", lambda: "a.b.c.d", "found 4"),
    ("number", lambda: 123, "must be a string"),
    ("list", lambda: [GOOD], "must be a string"),
    ("object", lambda: {"jwt": GOOD}, "must be a string"),
    ("None", lambda: None, "must be a string"),
    ("bytes", lambda: GOOD.encode(), "must be a string"),
    ("JWE RSA-OAEP", _jwe, "JWE"),
    ("JWE dir zip", _jwe_dir_zip, "JWE"),
    ("JWS JSON serialization", _jws_json, "found 1"),
    ("bang in sig", lambda: GOOD[:-2] + "!" + GOOD[-1], "not canonical"),
    ("dollar", lambda: GOOD + "$$$$", "not canonical"),
    ("percent", lambda: with_parts(GOOD, payload="%" + GOOD.split(".")[1]), "payload is not canonical"),
    ("plus", lambda: with_parts(GOOD, sig=GOOD.split(".")[2].replace("-", "+").replace("_", "+") + "+"), "not canonical"),
    ("slash", lambda: with_parts(GOOD, sig="/" + GOOD.split(".")[2][1:]), "not canonical"),
    ("padding", lambda: GOOD + "==", "not canonical"),
    ("interior space", lambda: with_parts(GOOD, sig=GOOD.split(".")[2][:10] + " " + GOOD.split(".")[2][10:]), "not canonical"),
    ("interior CR LF", lambda: with_parts(GOOD, sig=GOOD.split(".")[2][:10] + "\r\n" + GOOD.split(".")[2][10:]), "not canonical"),
    ("interior TAB", lambda: with_parts(GOOD, header=GOOD.split(".")[0][:5] + "\t" + GOOD.split(".")[0][5:]), "header is not canonical"),
    ("len mod 4 == 1", lambda: with_parts(GOOD, sig=GOOD.split(".")[2] + "A" * (1 - len(GOOD.split(".")[2]) % 4 + 4)), "not canonical"),
    ("non-canonical last char", lambda: with_parts(GOOD, sig=_flip_last(GOOD.split(".")[2])), "signature is not canonical"),
    ("non-canonical last char EC", lambda: with_parts(EC_GOOD, sig=_flip_last(EC_GOOD.split(".")[2])), "signature is not canonical"),
    ("non-ASCII", lambda: GOOD + "é", "non-ASCII"),
    ("non-ASCII inside", lambda: with_parts(GOOD, payload="ü" + GOOD.split(".")[1]), "non-ASCII"),
    ("NBSP around", lambda: "\u00a0" + GOOD, "non-ASCII"),
    ("header not utf8", lambda: make_token(default_claims(), key=RSA, raw_header=b'{"alg":"RS256","x":"\xff\xfe"}'), "header is not valid UTF-8"),
    ("payload overlong utf8", lambda: make_token(b'{"sub":"\xc0\xaf"}', key=RSA), "payload is not valid UTF-8"),
    ("header array", lambda: make_token(default_claims(), key=RSA, raw_header=b"[]"), "header must be a JSON object"),
    ("header string", lambda: make_token(default_claims(), key=RSA, raw_header=b'"str"'), "header must be a JSON object"),
    ("header null", lambda: make_token(default_claims(), key=RSA, raw_header=b"null"), "header must be a JSON object"),
    ("header 1", lambda: make_token(default_claims(), key=RSA, raw_header=b"1"), "header must be a JSON object"),
    ("payload array", lambda: make_token(b"[]", key=RSA), "payload must be a JSON object"),
    ("payload string", lambda: make_token(b'"str"', key=RSA), "payload must be a JSON object"),
    ("payload null", lambda: make_token(b"null", key=RSA), "payload must be a JSON object"),
    ("payload 1", lambda: make_token(b"1", key=RSA), "payload must be a JSON object"),
    ("header BOM", lambda: make_token(default_claims(), key=RSA, raw_header=b'\xef\xbb\xbf{"alg":"RS256"}'), "header is not valid JSON"),
    ("empty signature", lambda: with_parts(GOOD, sig=""), "signature is empty"),
    ("sig too short", lambda: with_parts(GOOD, sig=b64url(sig_bytes(GOOD)[:-6])), "no known key"),
    ("sig truncated to 4", lambda: with_parts(GOOD, sig="AAAA"), "no known key"),
]


@pytest.mark.parametrize(("build", "match"), [(b, m) for _, b, m in STRUCTURE], ids=[i for i, _, _ in STRUCTURE])
async def test_structure_attacks(build: Callable[[], object], match: str) -> None:
    await assert_rejected(static_source(RSA), build(), match=match)


@pytest.mark.parametrize("wrap", [" {} ", "{}\n", "\n{}\r\n", "\t{}\t", "{}\f\v"], ids=["spaces", "newline", "crlf", "tabs", "ff vt"])
async def test_surrounding_whitespace_is_trimmed(wrap: str) -> None:
    await login(static_source(RSA), wrap.format(GOOD))


# -- 2.4 JSON parsing ------------------------------------------------------------------

def _raw_payload(text: str) -> str:
    return make_token(text.encode("utf-8"), key=RSA, kid=DROP)


def _raw_header(text: str) -> str:
    return make_token(default_claims(), key=RSA, raw_header=text.encode("utf-8"))


NOW = '"iat":1700000000,"exp":9999999999'
JSON_CASES: list[tuple[str, Callable[[], str], str]] = [
    ("dup alg in header", lambda: _raw_header('{"alg":"HS256","alg":"RS256"}'), 'duplicate key "alg"'),
    ("dup sub", lambda: _raw_payload('{"sub":"alice","sub":"admin",' + NOW + "}"), 'duplicate key "sub"'),
    ("dup aud", lambda: _raw_payload('{"aud":"x","aud":"vault",' + NOW + "}"), 'duplicate key "aud"'),
    ("dup nested", lambda: _raw_payload('{"a":{"b":1,"b":2},' + NOW + "}"), "duplicate key"),
    ("NaN payload", lambda: _raw_payload('{"exp":NaN}'), "NaN is not allowed"),
    ("Infinity payload", lambda: _raw_payload('{"exp":Infinity}'), "Infinity is not allowed"),
    ("-Infinity payload", lambda: _raw_payload('{"nbf":-Infinity}'), "-Infinity is not allowed"),
    ("1e400 payload", lambda: _raw_payload('{"exp":1e400}'), "number out of range"),
    ("-1e400 nested", lambda: _raw_payload('{"x":[1,{"y":-1e400}]}'), "number out of range"),
    ("NaN header", lambda: _raw_header('{"alg":"RS256","x":NaN}'), "header is not valid JSON"),
    ("1e400 header", lambda: _raw_header('{"alg":"RS256","x":1e400}'), "header is not valid JSON"),
    ("huge int", lambda: _raw_payload('{"exp":' + "9" * 5000 + "}"), "payload is not valid JSON"),
    ("lone surrogate claim", lambda: _raw_payload('{"sub":"\\ud800",' + NOW + "}"), "lone surrogate"),
    ("lone surrogate key", lambda: _raw_payload('{"\\udfff":1,' + NOW + "}"), "lone surrogate"),
    ("lone surrogate header", lambda: _raw_header('{"alg":"RS256","kid":"\\ud800"}'), "lone surrogate"),
    ("deep payload 5000", lambda: _raw_payload('{"a":' + "[" * 5000 + "]" * 5000 + "}"), "nested too deeply"),
    ("deep header 5000 (unsigned)", lambda: with_parts(GOOD, header=b64url('{"a":' + "[" * 5000 + "]" * 5000 + "}")), "nested too deeply"),
    ("deep header 100000", lambda: with_parts(GOOD, header=b64url("[" * 100000)), "longer than the maximum"),
    ("deep objects", lambda: _raw_payload('{"a":' * 1500 + "1" + "}" * 1500), "nested too deeply"),
    ("SUB", lambda: _raw_payload('{"SUB":"admin","sub":"alice",' + NOW + "}"), 'key "SUB" collides with registered claim "sub"'),
    ("long s sub", lambda: _raw_payload('{"\\u017fub":"admin",' + NOW + "}"), 'registered claim "sub"'),
    ("Exp", lambda: _raw_payload('{"Exp":1,' + NOW + "}"), 'registered claim "exp"'),
    ("AUD", lambda: _raw_payload('{"AUD":"vault"}'), 'registered claim "aud"'),
    ("Iss", lambda: _raw_payload('{"Iss":"x"}'), 'registered claim "iss"'),
    ("JTI", lambda: _raw_payload('{"JTI":"x"}'), 'registered claim "jti"'),
    ("nBf", lambda: _raw_payload('{"nBf":1}'), 'registered claim "nbf"'),
    ("IAT", lambda: _raw_payload('{"IAT":1}'), 'registered claim "iat"'),
    ("trailing garbage", lambda: _raw_payload('{"sub":"a"} x'), "payload is not valid JSON"),
]


@pytest.mark.parametrize(("build", "match"), [(b, m) for _, b, m in JSON_CASES], ids=[i for i, _, _ in JSON_CASES])
async def test_json_attacks(build: Callable[[], str], match: str) -> None:
    await assert_rejected(static_source(RSA), build(), match=match)


# -- 2.7 Signature cryptography --------------------------------------------------------

def _es_sig(mutate: Callable[[int, int], bytes]) -> str:
    token = make_token(default_claims(), key=EC, kid=DROP)
    raw = sig_bytes(token)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    return with_parts(token, sig=b64url(mutate(r, s)))


def _rs_sig(mutate: Callable[[bytes], bytes]) -> str:
    return with_parts(GOOD, sig=b64url(mutate(sig_bytes(GOOD))))


def _n32(v: int) -> bytes:
    return v.to_bytes(32, "big")


ED = ed25519_key()
CRYPTO: list[tuple[str, Callable[[], str]]] = [
    ("ECDSA DER", lambda: _es_sig(lambda r, s: encode_dss_signature(r, s))),
    ("ECDSA r=s=0 psychic", lambda: _es_sig(lambda r, s: bytes(64))),
    ("ECDSA r=n", lambda: _es_sig(lambda r, s: _n32(P256_N) + _n32(s))),
    ("ECDSA s=n", lambda: _es_sig(lambda r, s: _n32(r) + _n32(P256_N))),
    ("ECDSA r+n", lambda: _es_sig(lambda r, s: (r + P256_N).to_bytes(33, "big")[1:] + _n32(s) if r + P256_N < 2**256 else bytes(64))),
    ("ECDSA 63 bytes", lambda: _es_sig(lambda r, s: (_n32(r) + _n32(s))[:63])),
    ("ECDSA 65 bytes", lambda: _es_sig(lambda r, s: _n32(r) + _n32(s) + b"\x00")),
    ("ECDSA 66 bytes", lambda: _es_sig(lambda r, s: b"\x00" + _n32(r) + b"\x00" + _n32(s))),
    ("RSA leading 00", lambda: _rs_sig(lambda b: b"\x00" + b)),
    ("RSA truncated", lambda: _rs_sig(lambda b: b[:-1])),
    ("RSA longer than modulus", lambda: _rs_sig(lambda b: b + b"\x01")),
    ("RSA value above modulus", lambda: _rs_sig(lambda b: b"\xff" * len(b))),
    ("RSA zero", lambda: _rs_sig(lambda b: bytes(len(b)))),
    ("RSA bit flip", lambda: _rs_sig(lambda b: bytes([b[0] ^ 1]) + b[1:])),
    ("EdDSA 63 bytes", lambda: (lambda k: with_parts(t := make_token(default_claims(), key=k), sig=b64url(sig_bytes(t)[:63])))(ED)),
    ("EdDSA zero", lambda: with_parts(make_token(default_claims(), key=ED), sig=b64url(bytes(64)))),
    ("PS256 as RS256", lambda: make_token(default_claims(), key=RSA, alg="RS256", kid=DROP,
        signature=sig_bytes(make_token(default_claims(), key=RSA, alg="PS256")))),
]


@pytest.mark.parametrize("build", [b for _, b in CRYPTO], ids=[i for i, _ in CRYPTO])
async def test_signature_crypto_attacks(build: Callable[[], str]) -> None:
    await assert_rejected(static_source(RSA, EC, ED), build(), match="no known key successfully validated")


async def test_ecdsa_high_s_twin_is_accepted() -> None:
    """RFC 7518 does not require low-S; token strings are therefore not unique."""
    twin = _es_sig(lambda r, s: _n32(r) + _n32(P256_N - s))
    original = make_token(default_claims(), key=EC, kid=DROP)
    assert twin != original
    await login(static_source(EC), twin)


async def test_rsa_small_keys_refused_everywhere() -> None:
    small = rsa_key(bits=1024)
    with pytest.raises(InvalidRequest, match="1024 bits"):
        build_key_source({"jwt_validation_pubkeys": [small.pem]}, FakeFetcher())
    assert keys_from_jwks(jwks(small.with_kid("s"))) == []
    assert keys_from_pems([rsa_key().pem])  # 2048 is fine


# -- 2.8 Size ---------------------------------------------------------------------------

async def test_one_megabyte_token_rejected_by_cap() -> None:
    big = "A" * (1 << 20)
    msg = await assert_rejected(static_source(RSA), big, match="longer than the maximum of 16384")
    assert len(msg) < 200
    signed_big = make_token(default_claims(pad="x" * 20000), key=RSA)
    await assert_rejected(static_source(RSA), signed_big, match="longer than the maximum")


async def test_long_claims_within_cap_are_fine() -> None:
    token = make_token(default_claims(sub="s" * 10000), key=EC)
    await login(static_source(EC), token)


# -- 2.9 Hostile or broken JWKS endpoint -----------------------------------------------

HOSTILE: list[tuple[str, Any]] = [
    ("not a keyset", "It's not a keyset!"),
    ("empty object", {}),
    ("keys string", {"keys": "x"}),
    ("empty keys", {"keys": []}),
    ("html", b"<!doctype html><html>login</html>"),
    ("json array", [{"kty": "RSA"}]),
    ("404", FetchResult(404, {}, b"not found")),
    ("500", FetchResult(500, {}, b"internal")),
    ("302 metadata", FetchResult(302, {"location": "http://169.254.169.254/latest/meta-data/"}, b"")),
    ("301 file", FetchResult(301, {"location": "file:///etc/passwd"}, b"")),
    ("307 loopback", FetchResult(307, {"location": "http://127.0.0.1:9/"}, b"")),
    ("huge body", b"[" + b"0," * (1 << 20) + b"0]"),
    ("timeout", UpstreamError("timed out after 10s")),
    ("tls unknown ca", UpstreamError("TLS error: certificate verify failed")),
    ("gzip refused", UpstreamError("unsupported Content-Encoding gzip")),
]


@pytest.mark.parametrize("answer", [a for _, a in HOSTILE], ids=[i for i, _ in HOSTILE])
async def test_hostile_jwks_endpoint(answer: Any) -> None:
    key = ec_key(kid="k")
    fetcher = FakeFetcher({JWKS_URL: answer})
    clock = Clock()
    src = build_key_source({"jwks_url": JWKS_URL}, fetcher, clock=clock)
    msg = await assert_rejected(src, make_token(default_claims(), key=key), match="failed to verify id token signature")
    for body in (b"keyset", b"login", b"internal", b"not found"):
        assert body.decode() not in msg  # never echo the upstream body
    with pytest.raises(InvalidRequest, match=f"error checking jwks URL {JWKS_URL}: "):
        await src.check()
    # The last good key set survives the hostile answer.
    fetcher.routes[JWKS_URL] = jwks(key)
    clock.now += 20
    await login(src, make_token(default_claims(), key=key))
    fetcher.routes[JWKS_URL] = answer
    clock.now += 20
    await assert_rejected(src, make_token(default_claims(), key=ec_key(kid="new")))
    await login(src, make_token(default_claims(), key=key))
    assert {u for _, u, _ in fetcher.calls} == {JWKS_URL}


async def test_concurrent_logins_share_one_slow_fetch() -> None:
    key = ec_key(kid="k")
    gate = asyncio.Event()
    fetcher = FakeFetcher({JWKS_URL: jwks(key)}, gate=gate)
    src = build_key_source({"jwks_url": JWKS_URL}, fetcher, clock=Clock())
    token = make_token(default_claims(), key=key)
    tasks = [asyncio.ensure_future(login(src, token)) for _ in range(50)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert fetcher.count() == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [None] * 50
    assert fetcher.count() == 1


async def test_discovery_issuer_mismatch_and_well_known_url() -> None:
    issuer = "https://idp.example.com"
    well_known = issuer + "/.well-known/openid-configuration"
    fetcher = FakeFetcher({well_known: {"issuer": issuer + "/", "jwks_uri": JWKS_URL}})
    src = build_key_source({"oidc_discovery_url": issuer}, fetcher)
    with pytest.raises(InvalidRequest, match="issuer in discovery document is https://idp.example.com/, expected"):
        await src.check()
    await assert_rejected(src, make_token(default_claims(), key=EC), match="issuer in discovery document")
    bad = build_key_source({"oidc_discovery_url": well_known}, fetcher)
    with pytest.raises(InvalidRequest, match="must be the issuer, without /.well-known/openid-configuration"):
        await bad.check()
    assert fetcher.count() == 2  # the well-known URL itself was never fetched
