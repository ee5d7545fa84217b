"""Sealing: how a secret is kept at rest or handed out opaque (an OIDC flow state).

A backend seals through ``SystemView.sealer``; the server's sealer uses the data keys of its
keyring (``server/keyring.py``), which never enter the storage in the clear. The format and
the cipher are defined here, once, so both sides agree:

``am1.<term>.<base64url(salt16 | nonce12 | AES-256-GCM ciphertext)>``. Each seal derives its
own key from the term key, a random 128-bit salt and the *context* (where the value lives or
what it is for), and binds the context as associated data: a sealed value cannot be moved
to another place and still open, and the random-nonce limit of one GCM key (2^32 seals)
does not apply to a term, however many values are sealed with it.

A *fingerprint* (``hmac-sha256:<base64url>``) names a secret without showing it: an HMAC of
the context and the value under a key only the server holds, so a value cannot be tested
against it offline. ``authmount apply`` compares a file's secret with the stored one by
asking the server for the fingerprint of both (docs/configuration.md, "Secrets in apply").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "SealError", "NewerTermError", "Sealer", "EphemeralSealer", "is_sealed", "seal_bytes", "open_bytes",
    "fingerprint_bytes", "PREFIX", "FINGERPRINT_PREFIX",
]

PREFIX = "am1."
FINGERPRINT_PREFIX = "hmac-sha256:"
_SALT = 16
_NONCE = 12
_TAG = 16


class SealError(ValueError):
    """A sealed value does not open: wrong context, unknown term, tampered or malformed."""


class NewerTermError(SealError):
    """A value sealed under a key term newer than any this process knows: another node (or
    worker) rotated the keyring a moment ago and this one has not re-read it yet. Not a
    forgery: callers that turn a ``SealError`` into "invalid" re-raise this one, and the
    server re-reads the keyring and answers 503 so that the client retries."""


class Sealer(Protocol):
    """Seals and opens values for one mount; ``context`` is relative to the mount (the
    storage key and field, ``config#oidc_client_secret``, or a purpose, ``oidc/state``)."""

    def seal(self, plaintext: bytes, context: str) -> str: ...

    def unseal(self, sealed: str, context: str) -> bytes: ...

    def fingerprint(self, plaintext: bytes, context: str) -> str:
        """A stable name of ``plaintext`` at ``context`` that does not reveal it (the same
        value at the same place gives the same fingerprint, for as long as the server's
        fingerprint key lives)."""
        ...


def is_sealed(value: object) -> bool:
    """True for a string in the sealed format (plaintext left by older versions is not)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(key: bytes, salt: bytes, context: str) -> AESGCM:
    return AESGCM(hmac.new(key, salt + context.encode("utf-8"), hashlib.sha256).digest())


def seal_bytes(key: bytes, plaintext: bytes, context: str) -> bytes:
    """``salt | nonce | ciphertext`` of ``plaintext`` under ``key`` for ``context``."""
    salt, nonce = secrets.token_bytes(_SALT), secrets.token_bytes(_NONCE)
    return salt + nonce + _derive(key, salt, context).encrypt(nonce, plaintext, context.encode("utf-8"))


def open_bytes(key: bytes, blob: bytes, context: str) -> bytes:
    """The plaintext of ``seal_bytes``.

    :raises SealError: too short, another key or context, tampered.
    """
    if len(blob) < _SALT + _NONCE + _TAG:
        raise SealError("sealed value too short")
    salt, nonce, ct = blob[:_SALT], blob[_SALT : _SALT + _NONCE], blob[_SALT + _NONCE :]
    try:
        return _derive(key, salt, context).decrypt(nonce, ct, context.encode("utf-8"))
    except InvalidTag:
        raise SealError("sealed value does not open here (wrong key or context, or tampered)") from None


def fingerprint_bytes(key: bytes, plaintext: bytes, context: str) -> str:
    """``hmac-sha256:`` + the base64url HMAC-SHA256 of ``context``, a NUL and ``plaintext``."""
    digest = hmac.new(key, context.encode("utf-8") + b"\0" + plaintext, hashlib.sha256).digest()
    return FINGERPRINT_PREFIX + b64e(digest)


def format_sealed(term: int, blob: bytes) -> str:
    return f"{PREFIX}{term}.{b64e(blob)}"


def parse_sealed(sealed: str) -> tuple[int, bytes]:
    """``(term, blob)`` of a sealed string.

    :raises SealError: not in the sealed format.
    """
    if not is_sealed(sealed):
        raise SealError("not a sealed value")
    term_text, dot, body = sealed[len(PREFIX) :].partition(".")
    if not dot or not term_text.isdigit() or len(term_text) > 9:
        raise SealError("malformed sealed value")
    try:
        return int(term_text), b64d(body)
    except (binascii.Error, ValueError):
        raise SealError("malformed sealed value") from None


class EphemeralSealer:
    """A sealer with one random key that lives as long as the object: for tests and tools
    (``StaticSystemView``), never for values that must outlive the process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._fingerprint_key = secrets.token_bytes(32)

    def seal(self, plaintext: bytes, context: str) -> str:
        return format_sealed(1, seal_bytes(self._key, plaintext, context))

    def unseal(self, sealed: str, context: str) -> bytes:
        term, blob = parse_sealed(sealed)
        if term != 1:
            raise SealError(f"sealed under unknown term {term}")
        return open_bytes(self._key, blob, context)

    def fingerprint(self, plaintext: bytes, context: str) -> str:
        return fingerprint_bytes(self._fingerprint_key, plaintext, context)
