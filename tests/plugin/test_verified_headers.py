"""``parse_token`` decodes the header part of a verified issuer once (``_VERIFIED_HEADERS``).

An issuer signs every token with the same header, so once a token's signature verified,
its header part's parse (header, alg, kid) is remembered. A remembered header must change
nothing: the same parsed token, the same refusal with the same message for every bad
payload or signature behind it. Only a verified token adds one, so an anonymous caller
cannot fill the memo with headers of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugin import jose_verify as jv
from plugin.errors import InvalidRequest
from tests.plugin.keyfactory import b64url, default_claims, ec_key, make_token, rsa_key

EC = ec_key(kid="k1")
OTHER = ec_key(kid="k1")
KEYS = jv.keys_from_pems([EC.pem])


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    jv._VERIFIED_HEADERS.clear()
    yield
    jv._VERIFIED_HEADERS.clear()


def _outcome(raw: Any) -> tuple[str, Any]:
    try:
        parsed = jv.parse_token(raw)
    except InvalidRequest as exc:
        return "refused", exc.messages
    return "parsed", (parsed.raw, parsed.header, parsed.claims, parsed.alg, parsed.kid)


def test_a_verified_token_leaves_its_header_and_it_parses_the_same() -> None:
    token = make_token(default_claims(), key=EC)
    first = jv.parse_token(token)
    assert jv._VERIFIED_HEADERS == {}
    assert jv.verify_signature(first, KEYS)
    head = token.split(".")[0]
    assert list(jv._VERIFIED_HEADERS) == [head]
    again = jv.parse_token(token)
    assert again == first and again.header is first.header
    other = jv.parse_token(make_token({**default_claims(), "sub": "someone"}, key=EC))
    assert other.header is first.header and other.claims["sub"] == "someone" and other.kid == "k1"


def test_a_token_that_does_not_verify_leaves_nothing() -> None:
    forged = jv.parse_token(make_token(default_claims(), key=OTHER))  # same header, other key
    assert not jv.verify_signature(forged, KEYS)
    head = b64url('{"alg":"ES256","kid":"k1"}')
    garbage = jv.parse_token(head + "." + b64url("{}") + ".AAAA")
    assert not jv.verify_signature(garbage, KEYS)
    assert jv._VERIFIED_HEADERS == {}


def _behind(head: str) -> list[str]:
    """Tokens with ``head`` and every kind of bad (or good) payload and signature."""
    good_payload, good_sig = b64url('{"sub":"a"}'), "c2ln"
    payloads = [
        good_payload, "", good_payload + "=", "a+b", b64url(b'{"a":"\xc3"}'), b64url('{"a":"\\ud800"}'),
        b64url('{"exp":NaN}'), b64url("[1]"), b64url('{"EXP":1}'), b64url('{"a":1,"a":2}'), b64url("{"),
        b64url('{"x":' + "[" * 70 + "]" * 70 + "}"), "Q",
    ]
    signatures = [good_sig, "", "a+b", "c2lu", "Q"]
    out = [f"{head}.{p}.{good_sig}" for p in payloads] + [f"{head}.{good_payload}.{s}" for s in signatures]
    return out + [f" {head}.{good_payload}.{good_sig}\n", f"{head}.{good_payload}", f"{head}.{good_payload}.a.b.c"]


@pytest.mark.parametrize("key", [EC, rsa_key(kid="r")], ids=["ES256", "RS256"])
def test_a_remembered_header_changes_no_outcome(key: Any) -> None:
    token = make_token(default_claims(), key=key)
    head = token.split(".")[0]
    cases = _behind(head)
    before = [_outcome(raw) for raw in cases]
    assert jv.verify_signature(jv.parse_token(token), jv.keys_from_pems([key.pem]))
    assert head in jv._VERIFIED_HEADERS
    after = [_outcome(raw) for raw in cases]
    assert after == before
    assert {kind for kind, _ in before} == {"parsed", "refused"}
    assert sum(kind == "refused" for kind, _ in before) >= 15


def test_the_memo_is_bounded() -> None:
    for n in range(jv._MAX_VERIFIED_HEADERS + 3):
        key = EC if n % 2 else OTHER
        token = make_token(default_claims(), key=key, header_overrides={"n": n})
        assert jv.verify_signature(jv.parse_token(token), jv.keys_from_pems([key.pem]))
    assert 0 < len(jv._VERIFIED_HEADERS) <= jv._MAX_VERIFIED_HEADERS
