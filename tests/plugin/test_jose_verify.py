"""Unit tests for plugin.jose_verify: parsing, key construction and signature verification."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from plugin import jose_verify as jv
from plugin.errors import InvalidRequest
from plugin.jsonlimits import MAX_JSON_DEPTH
from tests.plugin.keyfactory import (
    DROP,
    KeyPair,
    b64url,
    default_claims,
    dsa_public_pem,
    ec_key,
    ed25519_key,
    jwks,
    make_token,
    rsa_key,
    self_signed_cert_pem,
)

HMAC_SECRET = "0123456789abcdef0123456789abcdef"  # exactly 32 bytes


def _pem_of(private: PrivateKeyTypes) -> str:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


# -- happy paths -----------------------------------------------------------------------

HAPPY: list[tuple[str, Callable[[], KeyPair]]] = [
    ("RS256", lambda: rsa_key()),
    ("RS384", lambda: rsa_key(alg="RS384")),
    ("RS512", lambda: rsa_key(alg="RS512")),
    ("PS256", lambda: rsa_key(alg="PS256")),
    ("PS384", lambda: rsa_key(alg="PS384")),
    ("PS512", lambda: rsa_key(alg="PS512")),
    ("ES256", lambda: ec_key(crv="P-256")),
    ("ES384", lambda: ec_key(crv="P-384")),
    ("ES512", lambda: ec_key(crv="P-521")),
    ("EdDSA", lambda: ed25519_key()),
]


@pytest.mark.parametrize(("alg", "factory"), HAPPY, ids=[a for a, _ in HAPPY])
def test_verify_with_pem_keys(alg: str, factory: Callable[[], KeyPair]) -> None:
    key = factory()
    tok = jv.parse_token(make_token(default_claims(), key=key))
    assert tok.alg == alg
    keys = jv.keys_from_pems([key.pem])
    assert alg in {k.alg for k in keys}
    assert jv.verify_signature(tok, keys)


@pytest.mark.parametrize(("alg", "factory"), HAPPY, ids=[a for a, _ in HAPPY])
def test_verify_with_jwks_keys(alg: str, factory: Callable[[], KeyPair]) -> None:
    key = factory().with_kid("k1")
    keys = jv.keys_from_jwks(jwks(key))
    tok = jv.parse_token(make_token(default_claims(), key=key))
    assert tok.kid == "k1"
    assert all(k.kid == "k1" for k in keys)
    assert jv.verify_signature(tok, keys)


@pytest.mark.parametrize(("alg", "factory"), HAPPY, ids=[a for a, _ in HAPPY])
def test_wrong_key_does_not_verify(alg: str, factory: Callable[[], KeyPair]) -> None:
    key = factory()
    other = rsa_key(slot=1, alg=alg) if alg[:2] in ("RS", "PS") else factory()
    tok = jv.parse_token(make_token(default_claims(), key=key))
    assert not jv.verify_signature(tok, jv.keys_from_pems([other.pem]))


@pytest.mark.parametrize("alg", jv.HMAC_ALGS)
def test_hmac_happy_path(alg: str) -> None:
    keys = jv.keys_from_hmac_secrets([HMAC_SECRET])
    assert {k.alg for k in keys} == set(jv.HMAC_ALGS)
    tok = jv.parse_token(make_token(default_claims(), key=HMAC_SECRET, alg=alg))
    assert jv.verify_signature(tok, keys)
    bad = jv.parse_token(make_token(default_claims(), key=HMAC_SECRET + "x", alg=alg))
    assert not jv.verify_signature(bad, keys)


def test_certificate_pem_is_accepted() -> None:
    key = rsa_key()
    keys = jv.keys_from_pems([self_signed_cert_pem(key)])
    tok = jv.parse_token(make_token(default_claims(), key=key))
    assert jv.verify_signature(tok, keys)


def test_pkcs1_rsa_pem_is_accepted() -> None:
    key = rsa_key()
    keys = jv.keys_from_pems([key.pkcs1_pem])
    assert jv.verify_signature(jv.parse_token(make_token(default_claims(), key=key)), keys)


def test_pem_keys_bind_algorithms() -> None:
    assert sorted(k.alg for k in jv.keys_from_pems([rsa_key().pem])) == sorted(
        ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    )
    assert [k.alg for k in jv.keys_from_pems([ec_key(crv="P-384").pem])] == ["ES384"]
    assert [k.alg for k in jv.keys_from_pems([ed25519_key().pem])] == ["EdDSA"]


def test_verify_key_is_frozen_and_hides_impl() -> None:
    key = jv.keys_from_pems([ec_key().pem])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.alg = "RS256"  # type: ignore[misc]
    assert "_impl" not in repr(key)


# -- keys_from_pems refusals -----------------------------------------------------------

BAD_PEMS: list[tuple[str, Callable[[], object], str]] = [
    ("not a pem", lambda: "hello", "error parsing public key"),
    ("rsa 1024", lambda: rsa_key(bits=1024).pem, "1024 bits, at least 2048"),
    ("private key", lambda: rsa_key().private_pem, "private key"),
    ("secp256k1", lambda: _pem_of(ec.generate_private_key(ec.SECP256K1())), "curve secp256k1"),
    ("ed448", lambda: _pem_of(ed448.Ed448PrivateKey.generate()), "unsupported key type"),
    ("dsa", lambda: dsa_public_pem(2048), "unsupported key type DSAPublicKey"),
    ("truncated", lambda: rsa_key().pem[:100], "error parsing public key"),
    ("not a string", lambda: 42, "entry 0 is not a string"),
]


@pytest.mark.parametrize(("pem", "message"), [(f, m) for _, f, m in BAD_PEMS], ids=[i for i, _, _ in BAD_PEMS])
def test_keys_from_pems_rejects(pem: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as exc:
        jv.keys_from_pems([pem()])  # type: ignore[list-item]  # "not a string" is not a str
    assert exc.value.messages[0].startswith("error parsing public key: ")


# -- keys_from_hmac_secrets ------------------------------------------------------------

@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("short", "entry 0 is 5 bytes, at least 32"),
        ("", "entry 0 is 0 bytes"),
        ("x" * 31, "31 bytes"),
        (rsa_key().pem, "looks like a public key"),
        (123, "not a string"),
        ("\ud800" * 40, "not valid UTF-8"),
    ],
    ids=["short", "empty", "31 bytes", "pem as secret", "not a string", "lone surrogate"],
)
def test_hmac_secret_refusals(secret: str | int, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as exc:
        jv.keys_from_hmac_secrets([secret])  # type: ignore[list-item]  # "not a string" is an int
    if isinstance(secret, str) and secret:
        assert secret not in exc.value.messages[0]  # never echo the secret


def test_hmac_secret_counts_utf8_bytes() -> None:
    assert len(jv.keys_from_hmac_secrets(["é" * 16])) == 3  # 32 bytes, 16 characters


# -- keys_from_jwks --------------------------------------------------------------------

def test_keys_from_jwks_shape_errors() -> None:
    docs: tuple[object, ...] = ({}, [], {"keys": "x"}, "It's not a keyset!", None, {"keys": {}})
    for doc in docs:
        with pytest.raises(ValueError):
            jv.keys_from_jwks(doc)
    assert jv.keys_from_jwks({"keys": []}) == []


def test_keys_from_jwks_alg_pinning() -> None:
    key = rsa_key(kid="a")
    assert [k.alg for k in jv.keys_from_jwks(jwks(key.jwk(alg="RS512")))] == ["RS512"]
    assert [k.alg for k in jv.keys_from_jwks(jwks(key.jwk(alg="PS256")))] == ["PS256"]
    assert jv.keys_from_jwks(jwks(ec_key(crv="P-256").jwk(alg="ES256")))[0].alg == "ES256"
    assert jv.keys_from_jwks(jwks(ec_key(crv="P-384").jwk(alg="ES256"))) == []
    assert jv.keys_from_jwks(jwks(ed25519_key().jwk(alg="EdDSA")))[0].alg == "EdDSA"


def test_keys_from_jwks_max_keys() -> None:
    key = ec_key()
    doc = jwks(*[key.with_kid(str(i)) for i in range(10)])
    assert len(jv.keys_from_jwks(doc, max_keys=3)) == 3


def test_jwk_padded_members_are_tolerated() -> None:
    key = rsa_key(kid="p")
    jwk = key.jwk()
    jwk["n"] += "=" * (-len(jwk["n"]) % 4)
    assert len(jv.keys_from_jwks({"keys": [jwk]})) == 6


# -- parse_token -----------------------------------------------------------------------

def test_parse_token_fields() -> None:
    key = rsa_key(kid="kid-1")
    raw = make_token(default_claims(sub="bob"), key=key)
    tok = jv.parse_token(f"  {raw}\n")
    assert tok.raw == raw
    assert tok.claims["sub"] == "bob"
    assert tok.header["alg"] == "RS256" and tok.alg == "RS256" and tok.kid == "kid-1"
    assert jv.parse_token(make_token(default_claims(), key=key, kid=DROP)).kid is None


def test_parse_token_length_cap() -> None:
    raw = make_token(default_claims(blob="x" * 20000), key=ec_key())
    with pytest.raises(InvalidRequest, match="longer than the maximum of 16384"):
        jv.parse_token(raw)
    assert jv.parse_token(raw, max_length=40000).claims["blob"]


def _nested(depth: int) -> str:
    """A claims object whose ``deep`` claim nests arrays so the document is ``depth`` deep."""
    return '{"deep":' + "[" * (depth - 1) + "]" * (depth - 1) + ',"iat":1700000000,"exp":9999999999}'


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        (_nested(MAX_JSON_DEPTH), True),
        (_nested(MAX_JSON_DEPTH + 1), False),
        (_nested(5000), False),
        ('{"a":' * 1500 + "1" + "}" * 1500, False),
        # Brackets inside strings do not nest, escaped quotes do not end the string.
        ('{"s":"' + "[" * 500 + '\\" [[[","exp":9999999999}', True),
        # Many brackets side by side are wide, not deep.
        ('{"groups":[' + ",".join(["[1]"] * 300) + '],"exp":9999999999}', True),
    ],
    ids=["at the limit", "one over", "5000 arrays", "1500 objects", "brackets in strings", "wide"],
)
def test_nesting_limit_is_checked_before_parsing(payload: str, ok: bool) -> None:
    raw = make_token(payload.encode(), key=rsa_key(), kid=DROP)
    if ok:
        assert jv.parse_token(raw).claims
    else:
        with pytest.raises(InvalidRequest, match=f"token payload is nested too deeply \\(more than {MAX_JSON_DEPTH} levels\\)"):
            jv.parse_token(raw)


@pytest.mark.parametrize("limit", [200, 100_000])
def test_nesting_limit_does_not_depend_on_the_recursion_limit(limit: int) -> None:
    """A host that raises the recursion limit (mypy does, in-process) must not make deep
    documents parse, nor one that lowers it make ordinary ones fail."""
    import sys

    deep = make_token(_nested(3000).encode(), key=rsa_key(), kid=DROP)
    fine = make_token(_nested(MAX_JSON_DEPTH).encode(), key=rsa_key(), kid=DROP)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        with pytest.raises(InvalidRequest, match="nested too deeply"):
            jv.parse_token(deep)
        assert jv.parse_token(fine).claims
    finally:
        sys.setrecursionlimit(old)


def test_parse_token_errors_have_prefix() -> None:
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token("a.b")
    assert exc.value.messages == ["error validating token: token must have 3 dot-separated parts, found 2"]


def test_registered_claims_byte_identical_are_fine() -> None:
    claims = default_claims(jti="x", email="a@b", Subject="ok")
    assert jv.parse_token(make_token(claims, key=ec_key())).claims["Subject"] == "ok"


def test_assert_safe_backends_passes_and_detects(monkeypatch: pytest.MonkeyPatch) -> None:
    jv.assert_safe_backends()
    import jose.backends

    monkeypatch.setattr(jose.backends, "RSAKey", object)
    with pytest.raises(RuntimeError, match="cryptography backend"):
        jv.assert_safe_backends()


def test_verify_signature_never_raises_on_garbage_keys() -> None:
    tok = jv.parse_token(make_token(default_claims(), key=rsa_key()))
    junk = [jv.VerifyKey("RS256", None, object()), jv.VerifyKey("RS256", None, None)]
    assert jv.verify_signature(tok, junk) is False


def test_verify_signature_key_cap() -> None:
    key = ec_key()
    others = jv.keys_from_jwks(jwks(*[ec_key(kid=str(i)) for i in range(25)]))
    good = jv.keys_from_pems([key.pem])
    tok = jv.parse_token(make_token(default_claims(), key=key))
    assert jv.verify_signature(tok, others[:5] + good)
    assert not jv.verify_signature(tok, others + good)  # the good key is the 26th try
    assert jv.verify_signature(tok, others + good, max_tries=30)


def test_b64url_helper_roundtrip() -> None:
    assert b64url(b"\xff\xfe") == "__4"


def test_oversized_rsa_jwk_is_dropped() -> None:
    huge = {"kty": "RSA", "n": b64url(b"\xff" * 2100), "e": "AQAB", "kid": "huge"}
    assert jv.keys_from_jwks({"keys": [huge]}) == []
    assert len(jv.keys_from_jwks({"keys": [huge, rsa_key(kid="ok").jwk()]})) == 6


def test_long_json_reason_is_truncated() -> None:
    raw = make_token(b'{"exp":' + b"9" * 5000 + b"}", key=ec_key())
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(raw)
    assert len(exc.value.messages[0]) < 200
