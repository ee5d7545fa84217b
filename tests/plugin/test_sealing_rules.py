"""The sealed format of ``plugin/sealing.py`` (``am1.<term>.<base64url(salt16 | nonce12 |
AES-256-GCM)>``, the key derived per seal from the term key, the salt and the context) and the
fingerprint format, checked against an independent implementation of the documented format:
values sealed by one version or node must open on another, so the format is part of the
interface. Every refusal names its reason (issue 16; found by mutation testing,
docs/mutation.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plugin.sealing import (
    EphemeralSealer,
    SealError,
    fingerprint_bytes,
    format_sealed,
    open_bytes,
    parse_sealed,
    seal_bytes,
)

KEY = bytes(range(32))
SALT = bytes(range(100, 116))
NONCE = bytes(range(200, 212))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def reference_seal(key: bytes, plaintext: bytes, context: str) -> bytes:
    """The documented format, written out: salt | nonce | AES-256-GCM(HMAC-SHA256(key, salt |
    context)) with the context as associated data."""
    derived = hmac.new(key, SALT + context.encode(), hashlib.sha256).digest()
    return SALT + NONCE + AESGCM(derived).encrypt(NONCE, plaintext, context.encode())


def reference_open(key: bytes, blob: bytes, context: str) -> bytes:
    salt, nonce, ct = blob[:16], blob[16:28], blob[28:]
    derived = hmac.new(key, salt + context.encode(), hashlib.sha256).digest()
    return AESGCM(derived).decrypt(nonce, ct, context.encode())


@pytest.mark.parametrize("plaintext", [b"", b"s", b"client-secret", bytes(range(256))])
def test_the_format_matches_the_documented_one_both_ways(plaintext: bytes) -> None:
    assert open_bytes(KEY, reference_seal(KEY, plaintext, "auth/u1/config#secret"), "auth/u1/config#secret") == plaintext
    blob = seal_bytes(KEY, plaintext, "auth/u1/config#secret")
    assert len(blob) == 16 + 12 + len(plaintext) + 16
    assert reference_open(KEY, blob, "auth/u1/config#secret") == plaintext


def test_fingerprint_known_answer() -> None:
    """``hmac-sha256:`` + base64url(HMAC-SHA256(key, context | NUL | value)), no padding."""
    mac = hmac.new(KEY, b"config#secret\0hunter2", hashlib.sha256).digest()
    assert fingerprint_bytes(KEY, b"hunter2", "config#secret") == "hmac-sha256:" + b64url(mac)
    # the NUL keeps (context, value) pairs apart that concatenate to the same bytes
    assert fingerprint_bytes(KEY, b"b", "a") != fingerprint_bytes(KEY, b"", "ab")


@pytest.mark.parametrize("size", range(6))
def test_sealed_strings_are_url_safe_without_padding(size: int) -> None:
    """An OIDC ``state`` parameter is a sealed string: no ``=`` or other URL-special byte."""
    sealer = EphemeralSealer()
    sealed = sealer.seal(b"x" * size, "oidc/state")
    assert re.fullmatch(r"am1\.1\.[A-Za-z0-9_-]+", sealed)
    assert sealer.unseal(sealed, "oidc/state") == b"x" * size


def test_a_sealed_value_opens_on_another_sealer_with_the_same_key() -> None:
    sealed = format_sealed(7, reference_seal(KEY, b"v", "c"))
    assert sealed == "am1.7." + b64url(reference_seal(KEY, b"v", "c"))
    term, blob = parse_sealed(sealed)
    assert term == 7 and open_bytes(KEY, blob, "c") == b"v"


def _blob(size: int) -> str:
    return "am1.1." + b64url(bytes(size))


@pytest.mark.parametrize(("sealed", "message"), [
    ("plain", "not a sealed value"),
    ("", "not a sealed value"),
    ("am1.", "malformed sealed value"),
    ("am1.1", "malformed sealed value"),  # no dot after the term
    ("am1.x.AAAA", "malformed sealed value"),
    ("am1.-1.AAAA", "malformed sealed value"),
    ("am1.1234567890." + "A" * 80, "malformed sealed value"),  # ten digits: too long a term
    ("am1.123456789." + "A" * 80, "sealed under unknown term 123456789"),  # nine digits: a term
    ("am1.1.A", "malformed sealed value"),  # not base64
    (_blob(43), "sealed value too short"),
    (_blob(20), "sealed value too short"),
    (_blob(44), "sealed value does not open here (wrong key or context, or tampered)"),
    ("am1.2." + b64url(bytes(60)), "sealed under unknown term 2"),
])
def test_refusals_name_the_reason(sealed: str, message: str) -> None:
    with pytest.raises(SealError) as err:
        EphemeralSealer().unseal(sealed, "c")
    assert str(err.value) == message


def test_the_shortest_sealed_value_opens() -> None:
    """An empty secret seals to exactly salt + nonce + tag (44 bytes), which must open."""
    sealer = EphemeralSealer()
    assert sealer.unseal(sealer.seal(b"", "c"), "c") == b""
    assert open_bytes(KEY, seal_bytes(KEY, b"", "c"), "c") == b""
