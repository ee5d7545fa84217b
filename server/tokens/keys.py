"""The token store's own secrets, sealed at rest: the salt and the batch signing keys.

``sys/token/salt`` → ``{"sealed": <32 bytes sealed for "sys/token/salt#sealed">}``: every
service token is stored as an HMAC under it. ``sys/token/batch_key`` → ``{"keys": [{"sealed":
..., "retire_at": 0}, ...]}``, the newest first: new batch tokens are signed with the first,
and every key verifies until ``retire_at`` (set when a newer key replaces it, to the moment
the last token it signed expires). Older versions stored both in the clear (``{"value":
<base64>}``); ``load`` seals them in place on the first start of this version.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from plugin.sealing import Sealer
from plugin.storage import Storage

__all__ = ["SALT_KEY", "BATCH_KEY", "BatchKeys", "HmacSha256", "load_salt", "load_batch_keys", "rotate_batch_keys"]

SALT_KEY = "sys/token/salt"
BATCH_KEY = "sys/token/batch_key"
KEY_BYTES = 32


_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class HmacSha256:
    """HMAC-SHA256 under one key (RFC 2104), equal to ``hmac.new(key, msg, "sha256")``: the
    SHA-256 states of the padded key XOR ipad and XOR opad are hashed once, and each
    message continues copies of them. Copying an ``hmac.HMAC`` is Python code in 3.11 (a
    new object, then the OpenSSL HMAC context with its three digest contexts): 1.73 against
    0.91 us per token hash (microbenchmark)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, msg: bytes) -> bytes:
        """The 32-byte MAC of ``msg``."""
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, msg: bytes) -> str:
        """The MAC of ``msg`` in lower-case hex."""
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def _context(key: str) -> str:
    return key + "#sealed"


def _clear_value(old: Any, key: str) -> bytes:
    """The secret an older version stored in the clear, or fresh bytes when there is none.

    :raises RuntimeError: something else is stored there (a new secret would silently
        invalidate every token it protects).
    """
    if old is None:
        return secrets.token_bytes(KEY_BYTES)
    if isinstance(old, dict) and isinstance(old.get("value"), str):
        return base64.b64decode(old["value"])
    raise RuntimeError(f"storage returned no token store secret at {key}")


async def load_salt(storage: Storage, sealer: Sealer) -> bytes:
    """The salt, created (or sealed, if an older version left it in the clear) on demand."""

    def ensure(old: Any) -> Any:
        if isinstance(old, dict) and isinstance(old.get("sealed"), str):
            return old
        return {"sealed": sealer.seal(_clear_value(old, SALT_KEY), _context(SALT_KEY))}

    stored = await storage.update(SALT_KEY, ensure)  # one value even when nodes start together
    return sealer.unseal(stored["sealed"], _context(SALT_KEY))


@dataclass(frozen=True, slots=True)
class BatchKeys:
    """The batch signing keys: ``signing`` signs, each of ``verifying`` (``signing`` first)
    verifies."""

    signing: bytes
    verifying: tuple[bytes, ...]


def _open_batch(stored: Any, sealer: Sealer, now: float) -> BatchKeys:
    if not isinstance(stored, dict) or not isinstance(stored.get("keys"), list) or not stored["keys"]:
        raise RuntimeError(f"storage holds no batch signing key at {BATCH_KEY}")
    keys = [
        sealer.unseal(k["sealed"], _context(BATCH_KEY))
        for k in stored["keys"]
        if not k.get("retire_at") or k["retire_at"] > now
    ]
    return BatchKeys(keys[0], tuple(keys))


async def load_batch_keys(storage: Storage, sealer: Sealer, now: float) -> BatchKeys:
    """The batch keys, created (or sealed, from an older version's clear key) on demand."""

    def ensure(old: Any) -> Any:
        if isinstance(old, dict) and isinstance(old.get("keys"), list) and old["keys"]:
            return old
        return {"keys": [{"sealed": sealer.seal(_clear_value(old, BATCH_KEY), _context(BATCH_KEY)), "retire_at": 0}]}

    return _open_batch(await storage.update(BATCH_KEY, ensure), sealer, now)


async def rotate_batch_keys(storage: Storage, sealer: Sealer, now: float, max_ttl: int) -> BatchKeys:
    """A new signing key; the current ones keep verifying for ``max_ttl`` seconds (no
    batch token they signed lives longer), retired keys are dropped."""

    def rotate(old: Any) -> Any:
        kept = [
            {"sealed": k["sealed"], "retire_at": k.get("retire_at") or now + max_ttl}
            for k in (old or {}).get("keys", [])
            if not k.get("retire_at") or k["retire_at"] > now
        ]
        fresh = {"sealed": sealer.seal(secrets.token_bytes(KEY_BYTES), _context(BATCH_KEY)), "retire_at": 0}
        return {"keys": [fresh, *kept]}

    return _open_batch(await storage.update(BATCH_KEY, rotate), sealer, now)
