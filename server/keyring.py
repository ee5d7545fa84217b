"""Secrets at rest: a copy of the storage is not a credential.

Two levels, as in Vault's barrier:

- The **storage key** (32 bytes) never enters the storage. It comes from the environment
  (``AUTHMOUNT_STORAGE_KEY``, base64) or from a key file created with mode 0600 at first
  start (``storage.key_file``). Nodes sharing a database share it the same way.
- The **keyring** (``core/keyring``) holds the data keys ("terms"), sealed as a whole under
  the storage key. Every secret the server keeps (the token salt, the batch signing keys,
  an auth method's client secrets and HMAC keys, OIDC flow states) is sealed under the
  active term.

A sealed value is ``am1.<term>.<base64url(salt16 | nonce12 | AES-256-GCM ciphertext)>``.
Each seal derives its own key from the term key, a random 128-bit salt and the value's
*context* (the storage key it is written under, or what it is for), and binds the context
as associated data: a value cannot be moved to another place and still open, and the
random-nonce limit of one GCM key (2^32 seals) does not apply to a term, however many OIDC
states are sealed with it.

``rotate`` adds a term and makes it active; older terms stay so that values sealed under
them still open (the callers re-seal what they own). ``rewrap`` seals the keyring under a
new storage key (``authmount operator rekey``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plugin.storage import Storage

__all__ = [
    "KEYRING_KEY",
    "ENV_KEY",
    "Keyring",
    "SealError",
    "StorageKeyError",
    "is_sealed",
    "load_storage_key",
    "key_fingerprint",
]

KEYRING_KEY = "core/keyring"
ENV_KEY = "AUTHMOUNT_STORAGE_KEY"
KEY_BYTES = 32
_PREFIX = "am1."
_SALT = 16
_NONCE = 12


class SealError(ValueError):
    """A sealed value does not open: wrong context, unknown term, tampered or malformed."""


class StorageKeyError(RuntimeError):
    """The storage key is missing, malformed, or not the one the keyring was sealed with;
    the message says which and what to do."""


def is_sealed(value: object) -> bool:
    """True for a string in the sealed format (plaintext left by older versions is not)."""
    return isinstance(value, str) and value.startswith(_PREFIX)


def key_fingerprint(key: bytes) -> str:
    """A short public name of a storage key (not enough to recover it): 16 hex digits."""
    return hashlib.sha256(b"authmount storage key\0" + key).hexdigest()[:16]


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _derive(key: bytes, salt: bytes, context: str) -> AESGCM:
    return AESGCM(hmac.new(key, salt + context.encode("utf-8"), hashlib.sha256).digest())


def _seal(key: bytes, plaintext: bytes, context: str) -> bytes:
    salt, nonce = secrets.token_bytes(_SALT), secrets.token_bytes(_NONCE)
    return salt + nonce + _derive(key, salt, context).encrypt(nonce, plaintext, context.encode("utf-8"))


def _open(key: bytes, blob: bytes, context: str) -> bytes:
    if len(blob) < _SALT + _NONCE + 16:
        raise SealError("sealed value too short")
    salt, nonce, ct = blob[:_SALT], blob[_SALT : _SALT + _NONCE], blob[_SALT + _NONCE :]
    try:
        return _derive(key, salt, context).decrypt(nonce, ct, context.encode("utf-8"))
    except InvalidTag:
        raise SealError("sealed value does not open here (wrong key or context, or tampered)") from None


def load_storage_key(
    *, key_file: str | None, env: Mapping[str, str] | None = None, create: bool
) -> tuple[bytes, str]:
    """The storage key and where it came from (``"env"`` or the file path).

    The environment wins over the file. A missing file is created (0600, atomically) when
    ``create`` is true, i.e. when the storage holds no keyring yet.

    :raises StorageKeyError: no key anywhere (and ``create`` is false), a malformed key, a
        key file readable by others.
    """
    environ = os.environ if env is None else env
    raw = environ.get(ENV_KEY, "").strip()
    if raw:
        return _decode_key(raw, ENV_KEY), "env"
    if not key_file:
        raise StorageKeyError(
            f"no storage key: set {ENV_KEY} or storage.key_file (the key that seals this server's secrets)"
        )
    path = Path(key_file)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StorageKeyError(f"storage key file {path} is readable by others (mode {mode:o}); chmod 600 it")
        return _decode_key(path.read_text(encoding="ascii").strip(), str(path)), str(path)
    if not create:
        raise StorageKeyError(
            f"storage key file {path} does not exist, but the storage holds secrets sealed with a storage key: "
            f"copy the key file from the node that created it (or set {ENV_KEY})"
        )
    key = secrets.token_bytes(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        tmp.unlink()
        return load_storage_key(key_file=key_file, env=environ, create=False)
    tmp.unlink()
    return key, str(path)


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StorageKeyError(f"storage key from {where} must be {KEY_BYTES} bytes in base64")
    return key


@dataclass(frozen=True, slots=True)
class Term:
    """One data key."""

    number: int
    key: bytes
    created: float


class Keyring:
    """The data keys, opened with the storage key. Thread-safe for reads."""

    def __init__(self, storage_key: bytes, terms: dict[int, Term], active: int) -> None:
        self._storage_key = storage_key
        self._terms = terms
        self.active = active

    # -- storage ---------------------------------------------------------------------------
    @classmethod
    async def exists(cls, storage: Storage) -> bool:
        """Whether the storage already holds a keyring (so the storage key must exist)."""
        return await storage.get(KEYRING_KEY) is not None

    @classmethod
    async def open(cls, storage: Storage, storage_key: bytes, *, now: float | None = None) -> Keyring:
        """The keyring in ``storage``, created (term 1) when there is none.

        :raises StorageKeyError: the keyring was sealed under another storage key.
        """
        created = time.time() if now is None else now
        first = {"terms": {"1": {"key": _b64e(secrets.token_bytes(KEY_BYTES)), "created": created}}, "active": 1}
        fresh = cls._stored_form(storage_key, first)
        # update() so two nodes starting together agree on one keyring.
        stored = await storage.update(KEYRING_KEY, lambda old: old if old else fresh)
        return cls._from_stored(storage_key, stored)

    async def reload(self, storage: Storage) -> None:
        """Re-read the keyring (another node rotated it)."""
        stored = await storage.get(KEYRING_KEY)
        if stored is not None:
            other = self._from_stored(self._storage_key, stored)
            self._terms, self.active = other._terms, other.active

    async def rotate(self, storage: Storage, *, now: float | None = None) -> int:
        """Add a term and make it active; returns its number."""
        created = time.time() if now is None else now

        def add(old: Any) -> Any:
            ring = self._from_stored(self._storage_key, old)
            number = max(ring._terms) + 1
            body = ring._body()
            body["terms"][str(number)] = {"key": _b64e(secrets.token_bytes(KEY_BYTES)), "created": created}
            body["active"] = number
            return self._stored_form(self._storage_key, body)

        stored = await storage.update(KEYRING_KEY, add)
        other = self._from_stored(self._storage_key, stored)
        self._terms, self.active = other._terms, other.active
        return self.active

    async def rewrap(self, storage: Storage, new_storage_key: bytes) -> None:
        """Seal the keyring under ``new_storage_key`` (the data keys stay)."""

        def swap(old: Any) -> Any:
            ring = self._from_stored(self._storage_key, old)
            return self._stored_form(new_storage_key, ring._body())

        await storage.update(KEYRING_KEY, swap)
        self._storage_key = new_storage_key

    def status(self) -> dict[str, Any]:
        """What ``sys/key-status`` shows: the active term and when it was made."""
        term = self._terms[self.active]
        return {
            "term": term.number,
            "install_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(term.created)),
            "encryptions": None,
            "terms": len(self._terms),
            "storage_key_fingerprint": key_fingerprint(self._storage_key),
        }

    def _body(self) -> dict[str, Any]:
        return {
            "terms": {str(n): {"key": _b64e(t.key), "created": t.created} for n, t in self._terms.items()},
            "active": self.active,
        }

    @staticmethod
    def _stored_form(storage_key: bytes, body: dict[str, Any]) -> dict[str, Any]:
        blob = _seal(storage_key, orjson.dumps(body), KEYRING_KEY)
        return {"v": 1, "storage_key": key_fingerprint(storage_key), "sealed": _b64e(blob)}

    @classmethod
    def _from_stored(cls, storage_key: bytes, stored: Any) -> Keyring:
        if not isinstance(stored, dict) or stored.get("v") != 1 or not isinstance(stored.get("sealed"), str):
            raise StorageKeyError(f"{KEYRING_KEY} in storage is not a keyring this version can read")
        if stored.get("storage_key") != key_fingerprint(storage_key):
            raise StorageKeyError(
                f"the keyring in storage was sealed with storage key {stored.get('storage_key')}, "
                f"but this node has {key_fingerprint(storage_key)}: give every node the same key file "
                f"(or {ENV_KEY})"
            )
        try:
            body = orjson.loads(_open(storage_key, _b64d(stored["sealed"]), KEYRING_KEY))
            terms = {
                int(n): Term(int(n), _b64d(t["key"]), float(t["created"])) for n, t in body["terms"].items()
            }
            active = int(body["active"])
        except (SealError, ValueError, KeyError, TypeError) as exc:
            raise StorageKeyError(f"the keyring in storage does not open with this storage key: {exc}") from None
        if active not in terms:
            raise StorageKeyError("the keyring in storage has no active term")
        return cls(storage_key, terms, active)

    # -- sealing -------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, context: str) -> str:
        """``plaintext`` sealed under the active term for ``context``."""
        term = self._terms[self.active]
        return f"{_PREFIX}{term.number}.{_b64e(_seal(term.key, plaintext, context))}"

    def unseal(self, sealed: str, context: str) -> bytes:
        """The plaintext of a value ``seal`` made for ``context``.

        :raises SealError: malformed, an unknown term, another context, tampered.
        """
        if not is_sealed(sealed):
            raise SealError("not a sealed value")
        term_text, dot, body = sealed[len(_PREFIX) :].partition(".")
        if not dot or not term_text.isdigit() or len(term_text) > 9:
            raise SealError("malformed sealed value")
        term = self._terms.get(int(term_text))
        if term is None:
            raise SealError(f"sealed under unknown term {term_text}")
        try:
            blob = _b64d(body)
        except (binascii.Error, ValueError):
            raise SealError("malformed sealed value") from None
        return _open(term.key, blob, context)

    def term_of(self, sealed: str) -> int | None:
        """The term a sealed value was made with (None: not a sealed value)."""
        if not is_sealed(sealed):
            return None
        head = sealed[len(_PREFIX) :].partition(".")[0]
        return int(head) if head.isdigit() and len(head) <= 9 else None
