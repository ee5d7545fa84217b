"""``server.tokens.keys.HmacSha256``: the token store's and the batch signer's HMAC, built from
SHA-256 states, must equal the standard library's ``hmac`` for every key and message (stored
token hashes and batch signatures of earlier versions are compared against it)."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from server.tokens.keys import HmacSha256


@pytest.mark.parametrize("key_len", [0, 1, 16, 32, 63, 64, 65, 100, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 56, 64, 119, 1000])
def test_equals_hmac(key_len: int, msg_len: int) -> None:
    key, msg = os.urandom(key_len), os.urandom(msg_len)
    mac = HmacSha256(key)
    expected = hmac.new(key, msg, hashlib.sha256)
    assert mac.digest(msg) == expected.digest()
    assert mac.hexdigest(msg) == expected.hexdigest()


def test_states_are_not_consumed() -> None:
    """Each message starts from the keyed states: a MAC does not depend on earlier ones."""
    key = os.urandom(32)
    mac = HmacSha256(key)
    first = mac.hexdigest(b"hvs.one")
    mac.hexdigest(b"hvs.two")
    assert mac.hexdigest(b"hvs.one") == first == hmac.new(key, b"hvs.one", hashlib.sha256).hexdigest()
