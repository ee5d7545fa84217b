"""The JWK and verification rules of plugin.jose_verify at their edges: which keys a JWK set
contributes (what the key is for, private members, curves, coordinate sizes, the base64
spellings an IdP may use) and the caps (keys per JWK set, keys tried per token, token, kid
and RSA sizes) at their exact boundaries. Found by mutation testing (docs/mutation.md)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from plugin import jose_verify as jv
from plugin.errors import InvalidRequest
from tests.plugin.keyfactory import KeyPair, b64url, default_claims, ec_key, ed25519_key, jwks, make_token, rsa_key

RSA = rsa_key(kid="r", slot=5)
EC_SIZES = {"P-256": 32, "P-384": 48, "P-521": 66}


def _verifies(jwk: dict[str, Any], key: KeyPair) -> bool:
    """Does a JWK set holding only ``jwk`` verify a token ``key`` signed?"""
    keys = jv.keys_from_jwks({"keys": [jwk]})
    return jv.verify_signature(jv.parse_token(make_token(default_claims(), key=key)), keys)


def _std(text: str) -> str:
    """base64url text in the standard alphabet, padded."""
    return text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- what the key is for ----------------------------------------------------------------------

KEPT = [
    ("no use, no key_ops", {}),
    ("use sig", {"use": "sig"}),
    ("key_ops verify", {"key_ops": ["verify"]}),
    ("key_ops sign and verify", {"key_ops": ["sign", "verify"]}),
    ("use sig and key_ops verify", {"use": "sig", "key_ops": ["verify"]}),
    # issue 12: a public key published with its private half's ops, as node-oidc-provider
    # does and Vault (go-jose) accepts
    ("key_ops sign", {"key_ops": ["sign"]}),
]


@pytest.mark.parametrize("members", [m for _, m in KEPT], ids=[i for i, _ in KEPT])
def test_signing_keys_are_kept(members: dict[str, Any]) -> None:
    keys = jv.keys_from_jwks(jwks(RSA.jwk(**members)))
    assert sorted(k.alg for k in keys) == sorted(jv._RSA_ALGS)
    assert {k.kid for k in keys} == {"r"}
    assert _verifies(RSA.jwk(**members), RSA)


DROPPED_FOR_USE = [
    ("use enc", {"use": "enc"}),
    ("use SIG", {"use": "SIG"}),
    ("use null", {"use": None}),
    ("key_ops sign and decrypt", {"key_ops": ["sign", "decrypt"]}),
    ("key_ops empty", {"key_ops": []}),
    ("key_ops a string", {"key_ops": "verify"}),
    ("key_ops null", {"key_ops": None}),
    ("use sig but key_ops encrypt", {"use": "sig", "key_ops": ["encrypt"]}),
    # An encryption operation beside verify still refuses the key: each one of RFC 7517 4.3's.
    *[(f"key_ops verify and {op}", {"key_ops": ["verify", op]})
      for op in ("encrypt", "decrypt", "wrapKey", "unwrapKey", "deriveKey", "deriveBits")],
]


@pytest.mark.parametrize("members", [m for _, m in DROPPED_FOR_USE], ids=[i for i, _ in DROPPED_FOR_USE])
def test_keys_not_for_verifying_are_dropped(members: dict[str, Any]) -> None:
    assert jv.keys_from_jwks(jwks(RSA.jwk(**members))) == []
    assert not _verifies(RSA.jwk(**members), RSA)


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
@pytest.mark.parametrize("value", ["AQAB", None, ""], ids=["base64", "null", "empty"])
def test_each_private_member_refuses_the_key(member: str, value: Any) -> None:
    """Present at all (whatever its value) is enough: such a JWK set leaks a private key."""
    assert jv.keys_from_jwks(jwks(RSA.jwk(**{member: value}))) == []
    ec = ec_key(kid="e")
    assert jv.keys_from_jwks(jwks(ec.jwk(**{member: value}))) == []


def test_a_refused_key_does_not_drop_the_others() -> None:
    good = ec_key(kid="good")
    keys = jv.keys_from_jwks(jwks(RSA.jwk(p="AQAB"), "not a key", {"kty": "oct", "k": "c2VjcmV0"}, good))
    assert [(k.kid, k.alg) for k in keys] == [("good", "ES256")]


# -- curves and coordinates ---------------------------------------------------------------------

def test_x25519_is_refused() -> None:
    raw = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert jv.keys_from_jwks({"keys": [{"kty": "OKP", "crv": "X25519", "x": b64url(raw)}]}) == []
    # The same 32 bytes as an Ed25519 key are a valid verification key: only crv differs.
    assert [k.alg for k in jv.keys_from_jwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}]})] == [
        "EdDSA"
    ]


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed448", "x": b64url(b"\x01" * 57)},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": 5},
        {"kty": "OKP", "x": b64url(b"\x01" * 32)},
        {"kty": "EC", "crv": "P-192", "x": b64url(b"\x01" * 24), "y": b64url(b"\x01" * 24)},
        {"kty": "EC", "crv": "secp256k1", "x": b64url(b"\x01" * 32), "y": b64url(b"\x01" * 32)},
        {"kty": "EC", "crv": 256, "x": b64url(b"\x01" * 32), "y": b64url(b"\x01" * 32)},
        {"kty": "RSA", "n": "", "e": "AQAB"},
        {"kty": "RSA", "n": 12345, "e": "AQAB"},
        {"kty": "RSA", "e": "AQAB"},
        {"kty": 7},
        {"kty": "oct", "alg": "HS256"},
    ],
    ids=["Ed448", "OKP without x", "OKP x not a string", "OKP without crv", "P-192", "secp256k1",
         "crv not a string", "empty n", "n a number", "no n", "kty a number", "oct"],
)
def test_unusable_key_types_and_curves_are_dropped(jwk: dict[str, Any]) -> None:
    assert jv.keys_from_jwks({"keys": [jwk]}) == []


@pytest.mark.parametrize("crv", list(EC_SIZES))
@pytest.mark.parametrize("coord", ["x", "y"])
def test_ec_coordinate_one_byte_too_long_is_refused(crv: str, coord: str) -> None:
    """A leading zero byte keeps the point on the curve: only the length check refuses it."""
    key = ec_key(kid="c", crv=crv)
    jwk = key.jwk()
    assert _verifies(jwk, key)
    padded = dict(jwk, **{coord: b64url(b"\x00" + _unb64(jwk[coord]))})
    assert not _verifies(padded, key)


def _ec_key_with_short(crv: str, coord: str) -> KeyPair:
    """An EC key whose ``coord`` has a zero high byte (about 1 in 256 keys; 1 in 2 on P-521)."""
    size = EC_SIZES[crv]
    while True:
        key = ec_key(kid="s", crv=crv)
        public = key.public
        assert isinstance(public, ec.EllipticCurvePublicKey)
        numbers = public.public_numbers()
        if getattr(numbers, coord) < 1 << (8 * (size - 1)):
            return key


@pytest.mark.parametrize("crv", list(EC_SIZES))
@pytest.mark.parametrize("coord", ["x", "y"])
def test_ec_coordinate_one_byte_too_short_is_refused(crv: str, coord: str) -> None:
    key = _ec_key_with_short(crv, coord)
    jwk = key.jwk()
    assert _unb64(jwk[coord])[0] == 0 and _verifies(jwk, key)
    short = dict(jwk, **{coord: b64url(_unb64(jwk[coord])[1:])})
    assert not _verifies(short, key)


@pytest.mark.parametrize("crv", list(EC_SIZES))
def test_each_curve_gives_its_own_algorithm(crv: str) -> None:
    key = ec_key(kid="c", crv=crv)
    assert [k.alg for k in jv.keys_from_jwks(jwks(key))] == [key.alg]
    assert _verifies(key.jwk(), key)


def test_ec_key_with_another_curves_name_is_refused() -> None:
    key = ec_key(kid="c", crv="P-256")
    assert not _verifies(key.jwk(crv="P-384"), key)


def test_okp_key_pinned_to_eddsa_or_ed25519_is_kept() -> None:
    key = ed25519_key(kid="o")
    assert _verifies(key.jwk(alg="EdDSA"), key)
    assert _verifies(key.jwk(alg="Ed25519"), key)
    assert not _verifies(key.jwk(alg="ES256"), key)


# -- base64 spellings ---------------------------------------------------------------------------

def test_rsa_members_in_the_standard_alphabet_still_verify() -> None:
    jwk = RSA.jwk()
    std = dict(jwk, n=_std(jwk["n"]), e=_std(jwk["e"]))
    assert "+" in std["n"] or "/" in std["n"]
    assert _verifies(std, RSA)
    # Each substitution on its own: "-" and "_" both occur in a 2048-bit modulus.
    assert "-" in jwk["n"] and "_" in jwk["n"]
    assert _verifies(dict(jwk, n=jwk["n"].replace("-", "+")), RSA)
    assert _verifies(dict(jwk, n=jwk["n"].replace("_", "/")), RSA)


def test_ec_and_okp_members_in_the_standard_alphabet_still_verify() -> None:
    for _ in range(50):  # find coordinates that hold a "-" or "_" (most do)
        key = ec_key(kid="c")
        jwk = key.jwk()
        if any(c in jwk["x"] + jwk["y"] for c in "-_"):
            break
    assert _verifies(dict(jwk, x=_std(jwk["x"]), y=_std(jwk["y"])), key)


def test_members_are_decoded_whole() -> None:
    """Only "=" padding is trimmed from a member: its last character always counts."""
    for _ in range(2000):  # a P-384 coordinate is 64 characters, the last one takes any value
        key = ec_key(kid="c", crv="P-384")
        jwk = key.jwk()
        if jwk["x"].endswith("X") or jwk["y"].endswith("X"):
            break
    else:  # pragma: no cover - 1 in 32 per try
        pytest.fail("no coordinate ending in X")
    assert _verifies(jwk, key)
    assert _verifies(dict(jwk, x=_std(jwk["x"]) + "=", y=_std(jwk["y"]) + "=="), key)


def test_jwk_member_that_is_not_base64_drops_the_key() -> None:
    jwk = RSA.jwk()
    assert not _verifies(dict(jwk, n=jwk["n"][:-1] + "*"), RSA)
    assert not _verifies(dict(jwk, n="A"), RSA)


# -- caps at their boundaries -------------------------------------------------------------------

def test_jwk_set_cap_keeps_exactly_max_keys() -> None:
    key = ec_key()
    doc = jwks(*[key.with_kid(str(i)) for i in range(101)])
    assert [k.kid for k in jv.keys_from_jwks(doc)] == [str(i) for i in range(100)]
    assert len(jv.keys_from_jwks(doc, max_keys=101)) == 101


def test_key_try_cap_boundary() -> None:
    good = ec_key()
    others = jv.keys_from_pems([ec_key().pem for _ in range(jv.MAX_KEYS_PER_TOKEN)])
    mine = jv.keys_from_pems([good.pem])
    tok = jv.parse_token(make_token(default_claims(), key=good))
    assert jv.MAX_KEYS_PER_TOKEN == 20
    assert jv.verify_signature(tok, others[:19] + mine)  # the 20th try
    assert not jv.verify_signature(tok, others[:20] + mine)  # the 21st
    assert jv.verify_signature(tok, others[:20] + mine, max_tries=21)
    assert not jv.verify_signature(tok, others[:2] + mine, max_tries=2)


def test_keys_of_other_algorithms_do_not_count_as_tries() -> None:
    good = ec_key()
    rsa_keys = [k for k in jv.keys_from_pems([RSA.pem]) if k.alg == "RS256"] * 30
    tok = jv.parse_token(make_token(default_claims(), key=good))
    assert jv.verify_signature(tok, rsa_keys + jv.keys_from_pems([good.pem]))


def test_a_key_that_fails_does_not_stop_the_search() -> None:
    good = ec_key()
    tok = jv.parse_token(make_token(default_claims(), key=good))
    broken = jv.VerifyKey("ES256", None, object())
    assert jv.verify_signature(tok, [broken, *jv.keys_from_pems([good.pem])])
    ps = rsa_key(slot=6, alg="PS256")
    ps_tok = jv.parse_token(make_token(default_claims(), key=ps))
    ps_keys = [k for k in jv.keys_from_pems([RSA.pem, ps.pem]) if k.alg == "PS256"]
    assert jv.verify_signature(ps_tok, ps_keys)  # the first PS256 key fails, the second verifies


def test_token_length_cap_boundary() -> None:
    """The cap counts the input as sent, surrounding whitespace included."""
    raw = make_token(default_claims(), key=RSA)
    exact = raw + " " * (16384 - len(raw))
    assert jv.parse_token(exact).raw == raw
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(exact + " ")
    assert exc.value.messages == [
        "error validating token: token is longer than the maximum of 16384 characters"
    ]
    assert jv.parse_token(raw, max_length=len(raw)).raw == raw
    with pytest.raises(InvalidRequest, match="longer than the maximum of 99 characters"):
        jv.parse_token(raw, max_length=99)


def test_header_kid_length_boundary() -> None:
    assert jv.MAX_KID_LENGTH == 1024
    assert jv.parse_token(make_token(default_claims(), key=RSA, kid="k" * 1024)).kid == "k" * 1024
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(make_token(default_claims(), key=RSA, kid="k" * 1025))
    assert exc.value.messages == [
        "error validating token: key ID (kid) header parameter is longer than 1024 characters"
    ]


def test_jwk_kid_length_boundary() -> None:
    assert [k.kid for k in jv.keys_from_jwks(jwks(ec_key(kid="k" * 1024)))] == ["k" * 1024]
    assert jv.keys_from_jwks(jwks(ec_key(kid="k" * 1025))) == []


def _fake_rsa_jwk(bits: int) -> dict[str, Any]:
    """A public RSA JWK with an odd modulus of exactly ``bits`` bits (never used to verify)."""
    n = (1 << (bits - 1)) | 1
    return {"kty": "RSA", "kid": f"{bits}", "e": "AQAB", "n": b64url(n.to_bytes((bits + 7) // 8, "big"))}


@pytest.mark.parametrize(
    ("bits", "kept"),
    [(2047, False), (2048, True), (16384, True), (16385, False)],
)
def test_rsa_size_boundaries(bits: int, kept: bool) -> None:
    keys = jv.keys_from_jwks({"keys": [_fake_rsa_jwk(bits)]})
    assert (len(keys) == 6) is kept


@pytest.mark.parametrize(("bits", "message"), [(2047, "RSA key is 2047 bits, at least 2048 are required")])
def test_small_rsa_pem_names_its_size(bits: int, message: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 1)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(InvalidRequest) as exc:
        jv.keys_from_pems([pem])
    assert exc.value.messages == [f"error parsing public key: {message}"]


def test_large_rsa_pem_names_its_size() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.RSAPublicNumbers(65537, (1 << 16384) | 1)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(InvalidRequest) as exc:
        jv.keys_from_pems([pem])
    assert exc.value.messages == ["error parsing public key: RSA key is 16385 bits, at most 16384 are supported"]


def test_unsupported_curve_point_is_named() -> None:
    pem = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with pytest.raises(InvalidRequest) as exc:
        jv.keys_from_pems([pem])
    assert exc.value.messages == ["error parsing public key: EC curve secp256k1 is not supported"]



@pytest.mark.parametrize(
    ("make", "refused"),
    [(lambda a, b: a, False), (lambda a, b: a + "\n\n", False), (lambda a, b: "a note\n" + a, False),
     (lambda a, b: a + "x", True), (lambda a, b: a + b, True), (lambda a, b: a + "\n" + a, True)],
    ids=["one-key", "trailing-blank-lines", "leading-text", "trailing-text", "two-keys-in-one-entry", "one-key-twice"],
)
def test_a_pem_entry_holds_one_block(make: Any, refused: bool) -> None:
    """As OpenBao (``unexpected trailing data after parsed PEM block``): a second key pasted
    into the same entry was read as the first alone, the second silently left out (found by a
    side-by-side fuzz of config writes)."""
    pem = make(rsa_key().pem, ec_key().pem)
    if refused:
        with pytest.raises(InvalidRequest) as exc:
            jv.keys_from_pems([pem])
        assert exc.value.messages == ["error parsing public key: unexpected trailing data after parsed PEM block"]
    else:
        assert len(jv.keys_from_pems([pem])) == 6
