"""plugin.jose_verify's refusals, each with its exact message: a malformed token or key
gives a 4xx that names the failing check (and nothing of the token), so the wording is part
of the behaviour. Found by mutation testing (docs/mutation.md)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448

from plugin import jose_verify as jv
from plugin.errors import InvalidRequest
from plugin.jsonlimits import MAX_JSON_DEPTH
from tests.plugin.keyfactory import b64url, default_claims, dsa_public_pem, ec_key, ed25519_key, make_token, rsa_key

EC = ec_key(kid="e")
HEADER = b64url('{"alg":"ES256"}')
PAYLOAD = b64url('{"sub":"a"}')


def _raw(header: bytes | str, payload: bytes | str = b'{"sub":"a"}') -> str:
    return f"{b64url(header)}.{b64url(payload)}.c2ln"


#: (case, the token, the reason after "error validating token: ")
REFUSED: list[tuple[str, Any, str]] = [
    ("not a string", 5, "token must be a string"),
    ("bytes", b"a.b.c", "token must be a string"),
    ("empty", "", "token is empty"),
    ("only whitespace", " \t\r\n\f\v", "token is empty"),
    ("non-ASCII", "\u00e9.a.b", "token contains non-ASCII characters"),
    ("five parts", "a.b.c.d.e", "encrypted tokens (JWE) are not supported"),
    ("two parts", "a.b", "token must have 3 dot-separated parts, found 2"),
    ("four parts", "a.b.c.d", "token must have 3 dot-separated parts, found 4"),
    ("empty header", f".{PAYLOAD}.c2ln", "token header is empty"),
    ("empty payload", f"{HEADER}..c2ln", "token payload is empty"),
    ("empty signature", f"{HEADER}.{PAYLOAD}.", "token signature is empty"),
    ("header not base64url", f"{HEADER}!.{PAYLOAD}.c2ln", "token header is not canonical unpadded base64url"),
    ("payload padded", f"{HEADER}.{PAYLOAD}=.c2ln", "token payload is not canonical unpadded base64url"),
    ("signature standard alphabet", f"{HEADER}.{PAYLOAD}.a+b", "token signature is not canonical unpadded base64url"),
    ("header not UTF-8", _raw(b"\xff\xfe"), "token header is not valid UTF-8"),
    ("payload not UTF-8", _raw('{"alg":"ES256"}', b'{"a":"\xc3"}'), "token payload is not valid UTF-8"),
    ("header nested too deeply", _raw('{"alg":"ES256","x":' + "[" * 70 + "]" * 70 + "}"),
     f"token header is nested too deeply (more than {MAX_JSON_DEPTH} levels)"),
    ("lone surrogate", _raw('{"alg":"ES256"}', '{"a":"\\ud800"}'),
     "token payload contains an invalid unicode escape (lone surrogate)"),
    ("duplicate header key", _raw('{"alg":"ES256","alg":"none"}'), 'token header is not valid JSON: duplicate key "alg"'),
    ("NaN", _raw('{"alg":"ES256"}', '{"exp":NaN}'), "token payload is not valid JSON: NaN is not allowed"),
    ("Infinity", _raw('{"alg":"ES256"}', '{"exp":-Infinity}'), "token payload is not valid JSON: -Infinity is not allowed"),
    ("number out of range", _raw('{"alg":"ES256"}', '{"exp":1e400}'), "token payload is not valid JSON: number out of range"),
    ("syntax error", _raw('{"alg":"ES256"}', "{"),
     "token payload is not valid JSON: Expecting property name enclosed in double quotes"),
    ("payload an array", _raw('{"alg":"ES256"}', "[1]"), "token payload must be a JSON object"),
    ("header a string", _raw('"ES256"'), "token header must be a JSON object"),
    ("no alg", _raw('{"kid":"k"}'), "missing algorithm (alg) header parameter"),
    ("alg null", _raw('{"alg":null}'), "missing algorithm (alg) header parameter"),
    ("alg empty", _raw('{"alg":""}'), "missing algorithm (alg) header parameter"),
    ("alg a number", _raw('{"alg":256}'), "algorithm (alg) header parameter must be a string"),
    ("crit", _raw('{"alg":"ES256","crit":["exp"]}'),
     "unsupported header parameter (crit): no JWS extensions are supported"),
    ("b64", _raw('{"alg":"ES256","b64":false}'), "unsupported header parameter (b64): no JWS extensions are supported"),
    ("kid a number", _raw('{"alg":"ES256","kid":5}'), "key ID (kid) header parameter must be a string"),
    ("kid null", _raw('{"alg":"ES256","kid":null}'), "key ID (kid) header parameter must be a string"),
    ("claim EXP", _raw('{"alg":"ES256"}', '{"EXP":1}'),
     'ambiguous claim: key "EXP" collides with registered claim "exp" under case folding'),
    ("claim Sub", _raw('{"alg":"ES256"}', '{"Sub":"x","sub":"y"}'),
     'ambiguous claim: key "Sub" collides with registered claim "sub" under case folding'),
]


@pytest.mark.parametrize(("raw", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_parse_refusals_name_the_check(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(raw)
    assert exc.value.messages == [f"error validating token: {reason}"]


def test_long_json_reasons_are_cut_at_100_characters() -> None:
    key = "k" * 200
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(_raw(json.dumps({"alg": "ES256", key: 1, "x": 2}).replace('"x"', json.dumps(key))))
    reason = f"duplicate key {json.dumps(key)}"[:100]
    assert exc.value.messages == [f"error validating token: token header is not valid JSON: {reason}"]


def test_deep_nesting_still_refused_when_the_precheck_is_bypassed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RecursionError net behind the nesting pre-check gives the same message."""
    monkeypatch.setattr(jv, "too_deep", lambda text: False)
    with pytest.raises(InvalidRequest) as exc:
        jv.parse_token(_raw('{"alg":"ES256"}', '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), max_length=1 << 20)
    assert exc.value.messages == [
        f"error validating token: token payload is nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    ]


def test_whitespace_is_only_trimmed_at_the_ends() -> None:
    """Only ASCII whitespace is trimmed: a token ending in any other character keeps it."""
    key = ec_key(crv="P-384")  # 96 signature bytes: the last character takes any value
    for _ in range(2000):  # an ES384 signature is random: find one whose text ends in "X"
        raw = make_token(default_claims(), key=key)
        if raw.endswith("X"):
            break
    else:  # pragma: no cover - 1 in 64 per try
        pytest.fail("no signature ending in X")
    tok = jv.parse_token(f" \t\r\n\f\v{raw}\v\f\n\r\t ")
    assert tok.raw == raw
    assert jv.verify_signature(tok, jv.keys_from_pems([key.pem]))


def test_parsed_tokens_and_keys_are_read_only() -> None:
    tok = jv.parse_token(make_token(default_claims(), key=EC))
    with pytest.raises(dataclasses.FrozenInstanceError):
        tok.alg = "none"  # type: ignore[misc]
    key = jv.keys_from_pems([EC.pem])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.alg = "HS256"  # type: ignore[misc]


def _pem(private: Any) -> str:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        (lambda: rsa_key().private_pem, "data is a private key, a public key or certificate is required"),
        (lambda: dsa_public_pem(1024), "unsupported key type DSAPublicKey"),
        (lambda: _pem(ed448.Ed448PrivateKey.generate()), "unsupported key type Ed448PublicKey"),
        (lambda: 7, "entry 1 is not a string"),
    ],
    ids=["private key", "dsa", "ed448", "not a string"],
)
def test_pem_refusals_name_the_problem(pem: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        jv.keys_from_pems([EC.pem, pem()])
    assert exc.value.messages == [f"error parsing public key: {reason}"]


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (7, "entry 1 is not a string"),
        (rsa_key().pem, "entry 1 looks like a public key or certificate"),
        ("\ud800" * 40, "entry 1 is not valid UTF-8"),
        ("x" * 31, "entry 1 is 31 bytes, at least 32 are required"),
    ],
    ids=["not a string", "a public key", "lone surrogates", "31 bytes"],
)
def test_hmac_secret_refusals_name_the_entry(secret: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        jv.keys_from_hmac_secrets(["s" * 32, secret])
    assert exc.value.messages == [f"error parsing HMAC secret: {reason}"]


@pytest.mark.parametrize("alg", ["EdDSA", "PS256"])
def test_a_signature_that_is_not_base64url_never_verifies(alg: str) -> None:
    """Defence in depth: even a ParsedToken built by hand with a malformed signature fails."""
    key = rsa_key(alg="PS256") if alg == "PS256" else ed25519_key()
    keys = jv.keys_from_pems([key.pem])
    good = jv.parse_token(make_token(default_claims(), key=key, alg=alg))
    assert jv.verify_signature(good, keys)
    forged = dataclasses.replace(good, raw=good.raw.rpartition(".")[0] + ".!!!!")
    assert not jv.verify_signature(forged, keys)


def test_unsafe_backend_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import jose.backends

    monkeypatch.setattr(jose.backends, "HMACKey", object)
    with pytest.raises(RuntimeError) as exc:
        jv.assert_safe_backends()
    assert str(exc.value) == "python-jose is not using the cryptography backend; refusing to start"
